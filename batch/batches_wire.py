"""GigaChat's native batch API as pure functions: task lines, create / status / results
requests, and the parsers of their answers (both list shapes of the status answer).

    POST /batches?method=chat_completions|embedder   body: JSONL of {"id", "request"} lines
    GET  /batches[?batch_id=ID]                      {"batches": [item]} (spec) or [item] (Java)
    GET  /files/{output_file_id}/content             JSONL of {"id", "result"|"error"} lines
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import orjson

from batch.api_types import BatchInfo, TaskResult
from batch.errors import ServerError
from batch.wire import ApiRequest, json_payload, malformed

METHODS = ("chat_completions", "embedder")
OCTET_STREAM = "application/octet-stream"


def task_line(task_id: str, body: Mapping[str, Any]) -> bytes:
    """One line of a batch file: the task id (unique in the file) and the online body."""
    return orjson.dumps({"id": task_id, "request": body}) + b"\n"


def create_request(method: str, lines: bytes) -> ApiRequest:
    if method not in METHODS:
        raise ValueError(f"batch method must be one of {', '.join(METHODS)}, got {method!r}")
    return ApiRequest(
        "POST", f"/batches?{urlencode({'method': method})}", lines, {"Content-Type": OCTET_STREAM}
    )


def status_request(batch_id: str | None = None) -> ApiRequest:
    """The status of one batch, or (without an id) of every batch of the account."""
    if batch_id is None:
        return ApiRequest("GET", "/batches")
    return ApiRequest("GET", f"/batches?{urlencode({'batch_id': batch_id})}")


def results_request(output_file_id: str) -> ApiRequest:
    return ApiRequest("GET", f"/files/{quote(output_file_id, safe='')}/content")


def batch_info(item: Any) -> BatchInfo:
    """One batch item (of a create or status answer); ValueError when it has no id."""
    if not isinstance(item, dict) or not isinstance(item.get("id"), str):
        raise ValueError("a batch item needs a string id")
    counts = item.get("request_counts") or {}
    if not isinstance(counts, dict):
        raise ValueError("request_counts must be an object")
    output = item.get("output_file_id")
    return BatchInfo(
        id=item["id"],
        method=str(item.get("method") or ""),
        status=str(item.get("status") or ""),
        total=int(counts.get("total") or 0),
        completed=int(counts.get("completed") or 0),
        failed=int(counts.get("failed") or 0),
        output_file_id=str(output) if output else None,
        created_at=_int_or_none(item.get("created_at")),
        updated_at=_int_or_none(item.get("updated_at")),
    )


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def parse_created(response: httpx.Response) -> BatchInfo:
    data = json_payload(response, ("id",))
    try:
        return batch_info(data)
    except (ValueError, TypeError):
        raise malformed(response, "a created batch needs an id") from None


def parse_status(response: httpx.Response) -> list[BatchInfo]:
    """Both shapes official clients disagree on: `{"batches": [...]}` and a bare array."""
    data = json_payload(response, ("batches",))
    items = data.get("batches") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise malformed(response, "batch status answers {batches: [...]} or [...]")
    try:
        return [batch_info(item) for item in items]
    except (ValueError, TypeError):
        raise malformed(response, "every batch item needs an id") from None


def parse_task_result(line: str | bytes) -> TaskResult:
    """One output line; ServerError when it is neither a result nor an error."""
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise ServerError("malformed batch output: a line is not JSON") from None
    if not isinstance(data, dict):
        raise ServerError("malformed batch output: a line is not an object")
    task_id = data.get("id")
    task_id = None if task_id is None else str(task_id)
    result = data.get("result")
    if isinstance(result, dict):
        return TaskResult(task_id, result=result)
    error = data.get("error")
    if isinstance(error, dict):
        status = error.get("status")
        return TaskResult(
            task_id,
            error_status=int(status) if isinstance(status, int) else None,
            error_message=str(error.get("message") or "no message"),
        )
    raise ServerError(f"malformed batch output: task {task_id!r} has no result or error")
