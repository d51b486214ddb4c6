"""GigaChat's native batch API: `/api/v1/batches` and `/api/v1/files/{id}/content`.

A created batch answers every task at once, with the emulator's own chat and embeddings
answers (so a request gives the same answer online and in a batch), and shows them over
time: `created` for the first tenth of `batch_processing_s`, then `in_progress` with its
counts growing, then `completed` with an output file whose lines come in a shuffled order.
Invalid task lines and seeded failures are answered as per-task error lines.
"""

from __future__ import annotations

import hashlib
import math
import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import orjson

from batch.emulator import chat, embeddings
from batch.emulator.chat import RequestRejected
from batch.emulator.config import EmulatorConfig

METHODS = ("chat_completions", "embedder")
# The share of a batch's processing time it spends as `created` before `in_progress`.
CREATED_SHARE = 0.1
BATCH_NOT_FOUND = "Batch task not found"


class PollRefused(Exception):
    """This GET /batches is answered 429 (the `batch_poll_429_rate` knob)."""


@dataclass
class _Batch:
    id: str
    method: str
    total: int
    failed: int
    created_at: float
    due: float
    output_file_id: str
    output: bytes


def _error_line(task_id: Any, status: int, message: str) -> bytes:
    return orjson.dumps({"id": task_id, "error": {"status": status, "message": message}})


def _task_answer(method: str, request: Mapping[str, Any], config: EmulatorConfig) -> bytes:
    """The online answer body to `request` (RequestRejected as online)."""
    if method == "embedder":
        return embeddings.answer(request, config).body
    parsed = chat.parse_legacy(request)
    outcome = chat.complete(parsed, config, chat.PrefixCache(), None, 0.0)
    return chat.legacy_body(outcome, parsed.n)


def _seeded_failure(config: EmulatorConfig, line: bytes) -> bool:
    if config.batch_task_failure_rate <= 0:
        return False
    digest = hashlib.blake2b(line, digest_size=8, key=str(config.seed).encode()).digest()
    return int.from_bytes(digest, "big") / 2**64 < config.batch_task_failure_rate


def run_tasks(method: str, body: bytes, config: EmulatorConfig) -> tuple[list[bytes], int]:
    """The result line of every task line of a batch file, and how many are errors."""
    lines = [line for line in body.splitlines() if line.strip()]
    if not lines:
        raise RequestRejected(400, "Batch file is empty")
    if len(lines) > config.batch_max_lines:
        raise RequestRejected(
            400, f"Batch file has {len(lines)} lines, over the limit of {config.batch_max_lines}"
        )
    results: list[bytes] = []
    seen: set[str] = set()
    failed = 0
    for number, line in enumerate(lines, 1):
        result, ok = _task_result(method, line, number, seen, config)
        failed += not ok
        results.append(result)
    return results, failed


def _task_result(
    method: str, line: bytes, number: int, seen: set[str], config: EmulatorConfig
) -> tuple[bytes, bool]:
    """One task's result line, and whether it is a result (not an error)."""
    try:
        task = orjson.loads(line)
    except orjson.JSONDecodeError:
        return _error_line(None, 400, f"Line {number} is not valid JSON"), False
    task_id = task.get("id") if isinstance(task, dict) else None
    if not isinstance(task_id, str) or not task_id:
        return _error_line(None, 400, f"Line {number} has no string 'id'"), False
    if task_id in seen:
        return _error_line(task_id, 400, f"Line {number} repeats task id {task_id!r}"), False
    seen.add(task_id)
    request = task.get("request")
    if not isinstance(request, dict):
        return _error_line(task_id, 400, f"Line {number} has no 'request' object"), False
    if _seeded_failure(config, line):
        return _error_line(task_id, 500, "Internal Server Error"), False
    try:
        answer = _task_answer(method, request, config)
    except RequestRejected as exc:
        return _error_line(task_id, exc.status, exc.message), False
    return b'{"id":%s,"result":%s}' % (orjson.dumps(task_id), answer), True


class BatchStore:
    """Every batch created on this server, and their output files, in memory."""

    def __init__(self, seed: int) -> None:
        self._batches: dict[str, _Batch] = {}
        self._files: dict[str, _Batch] = {}
        self._polls = random.Random(f"batch-polls-{seed}")

    def handle(self, method: str, query: bytes, body: bytes, config: EmulatorConfig,
               now: float) -> bytes:
        """POST creates a batch (`?method=`); GET answers the status of one (`?batch_id=`)
        or of all. Raises RequestRejected or PollRefused."""
        params = parse_qs(query.decode("latin-1"))
        if method == "POST":
            return orjson.dumps(self.create(params.get("method", [""])[0], body, config, now))
        if method != "GET":
            raise RequestRejected(405, "Method not allowed")
        if config.batch_poll_429_rate and self._polls.random() < config.batch_poll_429_rate:
            raise PollRefused
        batch_id = params.get("batch_id", [None])[0]
        if batch_id is None:
            chosen = list(self._batches.values())
        elif batch_id in self._batches:
            chosen = [self._batches[batch_id]]
        else:
            raise RequestRejected(404, BATCH_NOT_FOUND)
        items = [self._item(batch, now) for batch in chosen]
        return orjson.dumps(items if config.batch_list_shape == "array" else {"batches": items})

    def create(self, method: str, body: bytes, config: EmulatorConfig,
               now: float) -> dict[str, Any]:
        if method not in METHODS:
            raise RequestRejected(400, f"method must be one of {', '.join(METHODS)}")
        results, failed = run_tasks(method, body, config)
        batch_id = str(uuid.uuid4())
        random.Random(f"{config.seed}-{batch_id}").shuffle(results)
        batch = _Batch(
            id=batch_id,
            method=method,
            total=len(results),
            failed=failed,
            created_at=now,
            due=now + config.batch_processing_s,
            output_file_id=str(uuid.uuid4()),
            output=b"\n".join(results) + b"\n",
        )
        self._batches[batch_id] = batch
        self._files[batch.output_file_id] = batch
        return {
            "id": batch_id,
            "method": method,
            "request_counts": {"total": batch.total},
            "status": "created",
            "created_at": int(now),
            "updated_at": int(now),
        }

    def file_content(self, path: str, now: float) -> bytes:
        """The output file at `/api/v1/files/{id}/content` once its batch has completed."""
        file_id = path.removeprefix("/api/v1/files/").removesuffix("/content")
        batch = self._files.get(file_id)
        if batch is None or now < batch.due:
            raise RequestRejected(404, "File not found")
        return batch.output

    @staticmethod
    def _item(batch: _Batch, now: float) -> dict[str, Any]:
        span = batch.due - batch.created_at
        share = 1.0 if span <= 0 else min(1.0, (now - batch.created_at) / span)
        if share >= 1.0:
            status, done, failed = "completed", batch.total, batch.failed
        elif share < CREATED_SHARE:
            status, done, failed = "created", 0, 0
        else:
            status = "in_progress"
            done = math.floor(batch.total * share)
            failed = math.floor(batch.failed * share)
        item: dict[str, Any] = {
            "id": batch.id,
            "method": batch.method,
            "request_counts": {"total": batch.total, "completed": done - failed,
                               "failed": failed},
            "status": status,
            "created_at": int(batch.created_at),
            "updated_at": int(min(now, batch.due)),
        }
        if status == "completed":
            item["output_file_id"] = batch.output_file_id
        return item
