"""Polling in `--mode batches` (batch/batches_polling.py) over httpx.MockTransport: one
list-all request per round when several batches wait, per-id requests for what the list
leaves out, and 429s waited out before the retry."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import httpx
import orjson

from batch.api_types import BatchInfo
from batch.batches_polling import PatientApi, Polled, poll_statuses
from batch.batches_settings import PollPacing
from batch.client import GigaChatClient
from batch.errors import NotFound, ServerError
from batch.pricing import PriceTable
from batch.retry import RetryPolicy
from batch.settings import ClientSettings
from batch.summary import RunStats

Handler = Callable[[httpx.Request], httpx.Response]


def item(batch_id: str, status: str = "in_progress") -> dict[str, Any]:
    return {"id": batch_id, "method": "chat_completions", "status": status,
            "request_counts": {"total": 2, "completed": 1, "failed": 0}}


def answer(status: int, body: Any, **headers: str) -> httpx.Response:
    return httpx.Response(status, content=orjson.dumps(body), headers=headers)


class Server:
    """Batches by id; `listed` are the ids the list-all answer names."""

    def __init__(self, ids: Sequence[str], listed: Sequence[str] | None = None) -> None:
        self.ids = set(ids)
        self.listed = list(ids if listed is None else listed)
        self.seen: list[str | None] = []  # batch_id of each GET (None: the list)
        self.list_answers: list[httpx.Response] = []  # answered first, before the list

    def __call__(self, request: httpx.Request) -> httpx.Response:
        batch_id = request.url.params.get("batch_id")
        self.seen.append(batch_id)
        if batch_id is None:
            if self.list_answers:
                return self.list_answers.pop(0)
            return answer(200, {"batches": [item(i) for i in self.listed]})
        if batch_id not in self.ids:
            return answer(404, {"status": 404, "message": "Batch task not found"})
        return answer(200, [item(batch_id)])


def poll(
    server: Handler, ids: Sequence[str], retry: RetryPolicy | None = None
) -> tuple[dict[str, Polled], RunStats]:
    stats = RunStats(kind="chat", prices=PriceTable.load())
    pacing = PollPacing(0.01, 0.05, rng=random.Random(1))
    api = PatientApi(retry or RetryPolicy(initial=0.01, max_wait=0.02), pacing, stats)
    settings = ClientSettings.from_env({}, access_token="tok", base_url="http://api.test/api/v1")

    async def scenario() -> dict[str, Polled]:
        async with GigaChatClient(settings, transport=httpx.MockTransport(server)) as client:
            return await poll_statuses(api, client, ids)

    return anyio.run(scenario), stats


def statuses(polled: dict[str, Polled]) -> dict[str, str]:
    return {i: p.status for i, p in polled.items() if isinstance(p, BatchInfo)}


def test_several_waiting_batches_are_polled_with_one_list_request() -> None:
    server = Server(["a", "b", "c"], listed=["x", "a", "b", "c"])
    polled, stats = poll(server, ["a", "b", "c"])
    assert server.seen == [None]
    assert statuses(polled) == {"a": "in_progress", "b": "in_progress", "c": "in_progress"}
    assert stats.requests == 1


def test_a_batch_the_list_leaves_out_is_asked_for_by_id() -> None:
    server = Server(["a", "b", "c"], listed=["a"])  # a paged or partial list
    polled, _ = poll(server, ["a", "b", "c"])
    assert server.seen == [None, "b", "c"]
    assert set(statuses(polled)) == {"a", "b", "c"}


def test_one_waiting_batch_is_asked_for_by_id_alone() -> None:
    server = Server(["a"])
    polled, _ = poll(server, ["a"])
    assert server.seen == ["a"]
    assert statuses(polled) == {"a": "in_progress"}


def test_a_batch_gone_from_the_server_polls_as_not_found() -> None:
    server = Server(["a"], listed=["a"])
    polled, _ = poll(server, ["a", "gone"])
    assert server.seen == [None, "gone"]
    assert isinstance(polled["gone"], NotFound)


def test_a_429_on_the_list_waits_for_retry_after_then_lists_again() -> None:
    server = Server(["a", "b"])
    server.list_answers = [answer(429, {"status": 429, "message": "Too many"},
                                  **{"Retry-After": "0.3"})]
    started = time.monotonic()
    polled, stats = poll(server, ["a", "b"])
    assert time.monotonic() - started >= 0.3
    assert server.seen == [None, None]
    assert set(statuses(polled)) == {"a", "b"}
    assert (stats.rate_limited, stats.requests) == (1, 2)


def test_a_failing_list_leaves_every_batch_for_the_next_round_without_asking_each() -> None:
    server = Server(["a", "b"])
    server.list_answers = [answer(500, {"status": 500, "message": "down"})] * 2
    polled, _ = poll(server, ["a", "b"], RetryPolicy(max_attempts=2, initial=0.01))
    assert server.seen == [None, None]
    assert all(isinstance(p, ServerError) for p in polled.values())


def test_a_list_refused_for_good_falls_back_to_a_request_per_batch() -> None:
    server = Server(["a", "b"])
    server.list_answers = [answer(400, {"status": 400, "message": "batch_id is required"})]
    polled, _ = poll(server, ["a", "b"])
    assert server.seen == [None, "a", "b"]
    assert set(statuses(polled)) == {"a", "b"}
