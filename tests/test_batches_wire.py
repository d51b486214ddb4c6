"""The batch API's pure build/parse functions, and the client's three batch calls over
httpx.MockTransport (the results file streamed line by line)."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import orjson
import pytest

from batch import batches_wire
from batch.api_types import TaskResult
from batch.client import GigaChatClient
from batch.errors import NotFound, RateLimited, ServerError
from batch.settings import ClientSettings

ITEM = {
    "id": "b-1",
    "method": "chat_completions",
    "request_counts": {"total": 3, "completed": 2, "failed": 1},
    "status": "completed",
    "output_file_id": "f-1",
    "created_at": 1700000000,
    "updated_at": 1700000060,
}


def _response(status: int, body: Any, **headers: str) -> httpx.Response:
    return httpx.Response(status, content=orjson.dumps(body), headers=headers)


def test_task_line_carries_the_id_and_the_online_body() -> None:
    line = batches_wire.task_line("t1", {"model": "GigaChat", "messages": []})
    assert line.endswith(b"\n")
    assert orjson.loads(line) == {"id": "t1", "request": {"model": "GigaChat", "messages": []}}


def test_create_request_posts_octet_stream_with_the_method() -> None:
    request = batches_wire.create_request("embedder", b"{}\n")
    assert (request.method, request.url) == ("POST", "/batches?method=embedder")
    assert request.headers["Content-Type"] == "application/octet-stream"
    assert request.body == b"{}\n"


def test_create_request_refuses_an_unknown_method() -> None:
    with pytest.raises(ValueError, match="chat_completions, embedder"):
        batches_wire.create_request("images", b"")


def test_status_request_names_one_batch_or_lists_all() -> None:
    assert batches_wire.status_request("b 1").url == "/batches?batch_id=b+1"
    assert batches_wire.status_request().url == "/batches"


def test_status_parses_the_spec_object_shape() -> None:
    [info] = batches_wire.parse_status(_response(200, {"batches": [ITEM]}))
    assert (info.id, info.status, info.total, info.completed, info.failed) == (
        "b-1", "completed", 3, 2, 1,
    )
    assert info.output_file_id == "f-1"


def test_status_parses_the_java_clients_bare_array() -> None:
    [info] = batches_wire.parse_status(_response(200, [ITEM]))
    assert info.id == "b-1"


def test_status_of_an_unknown_batch_is_not_found() -> None:
    with pytest.raises(NotFound, match="Batch task not found"):
        batches_wire.parse_status(
            _response(404, {"status": 404, "message": "Batch task not found"})
        )


def test_a_429_on_status_carries_retry_after() -> None:
    with pytest.raises(RateLimited) as caught:
        batches_wire.parse_status(_response(429, {"status": 429}, **{"Retry-After": "3"}))
    assert caught.value.retry_after == 3.0


def test_created_parses_the_counts_of_a_new_batch() -> None:
    body = {"id": "b-2", "method": "embedder", "request_counts": {"total": 7},
            "status": "created", "created_at": 1, "updated_at": 1}
    info = batches_wire.parse_created(_response(200, body))
    assert (info.id, info.status, info.total, info.output_file_id) == ("b-2", "created", 7, None)


def test_task_result_lines_are_results_or_errors() -> None:
    ok = batches_wire.parse_task_result(b'{"id": "t1", "result": {"choices": []}}')
    bad = batches_wire.parse_task_result('{"id": "t2", "error": {"status": 413, "message": "big"}}')
    assert ok == TaskResult("t1", result={"choices": []})
    assert bad == TaskResult("t2", error_status=413, error_message="big")


def test_a_task_line_with_neither_result_nor_error_is_a_server_error() -> None:
    with pytest.raises(ServerError, match="no result or error"):
        batches_wire.parse_task_result(b'{"id": "t3"}')


def _client(handler: Any) -> GigaChatClient:
    settings = ClientSettings.from_env(access_token="tok", base_url="http://api.test/api/v1")
    return GigaChatClient(settings, transport=httpx.MockTransport(handler))


def test_client_creates_polls_and_streams_results() -> None:
    seen: list[tuple[str, str, str | None]] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, str(request.url), request.headers.get("content-type")))
        assert request.headers["authorization"] == "Bearer tok"
        if request.method == "POST":
            return _response(200, {**ITEM, "status": "created"})
        if "/files/" in request.url.path:
            return httpx.Response(200, content=b'{"id":"a","result":{}}\n\n{"id":"b","error":{}}\n')
        return _response(200, [ITEM])

    async def scenario() -> tuple[str, str, list[str]]:
        async with _client(handler) as client:
            created = await client.create_batch("chat_completions", b'{"id":"a"}\n')
            [status] = await client.batch_status("b-1")
            lines = [line async for line in client.download_batch_results("f-1")]
        return created.status, status.status, lines

    created, status, lines = anyio.run(scenario)
    assert (created, status) == ("created", "completed")
    assert lines == ['{"id":"a","result":{}}', '{"id":"b","error":{}}']
    assert seen[0] == (
        "POST", "http://api.test/api/v1/batches?method=chat_completions", "application/octet-stream"
    )
    assert seen[1][1] == "http://api.test/api/v1/batches?batch_id=b-1"
    assert seen[2][1] == "http://api.test/api/v1/files/f-1/content"


def test_client_download_of_a_missing_file_raises_not_found() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return _response(404, {"status": 404, "message": "File not found"})

    async def scenario() -> None:
        async with _client(handler) as client:
            async for _ in client.download_batch_results("nope"):
                pass

    with pytest.raises(NotFound, match="File not found"):
        anyio.run(scenario)
