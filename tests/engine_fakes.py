"""Small fakes of a job kind and an API client for the engine's tests.

Jobs are `{"id": ..., "text": ...}` lines; the fake kind packs `batch_size` jobs per request and
asks the fake client for one answer per text. The client's behaviour is scripted by text:
`bad` -> 400, `flaky` -> one 503 then success, `fatal` -> 401, `slow` -> a long wait;
over `stream_limit` concurrent calls -> 429.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import anyio
import pyarrow as pa

from batch.api_types import Usage
from batch.errors import AuthenticationFailed, BadRequest, RateLimited, ServerError
from jobs.base import (
    Batch,
    BilledInput,
    Job,
    JobInvalid,
    JobKind,
    JobOutcome,
    JobResult,
    Problem,
    SourceLocation,
)


class FakePacker:
    def __init__(self, size: int) -> None:
        self.size = size
        self.pending: list[Job] = []

    def add(self, job: Job) -> list[Batch]:
        self.pending.append(job)
        if len(self.pending) >= self.size:
            return self.flush()
        return []

    def flush(self) -> list[Batch]:
        if not self.pending:
            return []
        batch, self.pending = Batch(self.pending), []
        return [batch]


class FakeKind(JobKind):
    name: ClassVar[str] = "fake"
    batch_api_method: ClassVar[str] = "fake"

    def __init__(self, batch_size: int = 1, model: str = "Fake") -> None:
        self.batch_size = batch_size
        self.model = model

    def source_fields(self) -> Mapping[str, str]:
        return {"id": "id", "text": "text"}

    def job_from_record(self, record: Mapping[str, Any], location: SourceLocation) -> Job:
        text = record.get("text")
        if not isinstance(text, str):
            raise JobInvalid([Problem(location, "text", "expected a string")])
        job_id = record.get("id")
        return Job(str(job_id if job_id is not None else location.number), location, {"text": text})

    def answer_settings(self) -> Mapping[str, Any]:
        return {"model": self.model}

    def packer(self) -> FakePacker:
        return FakePacker(self.batch_size)

    def reserve(self, batch: Batch) -> Usage:
        return Usage(prompt_tokens=10 * len(batch.jobs), completion_tokens=10 * len(batch.jobs))

    def request_body(self, batch: Batch) -> dict[str, Any]:
        return {"input": [job.request["text"] for job in batch.jobs]}

    def outcomes(self, batch: Batch, body: Mapping[str, Any]) -> Sequence[JobOutcome]:
        return [
            JobResult(job, {"answer": answer}, Usage(3, 2), self.model + ":1.0")
            for job, answer in zip(batch.jobs, body["answers"], strict=True)
        ]

    async def send(self, client: FakeClient, batch: Batch) -> Sequence[JobOutcome]:
        answers = await client.answer(self.request_body(batch)["input"])
        return self.outcomes(batch, {"answers": answers})

    def billed_input(self, job: Job, *, message_overhead: int | None = None) -> BilledInput:
        return BilledInput(self.model, (job.request["text"],), 0)

    def result_schema(self) -> pa.Schema:
        return pa.schema(
            [
                ("id", pa.string()),
                ("answer", pa.string()),
                ("attempts", pa.int32()),
                ("latency_ms", pa.float64()),
            ]
        )


class FakeClient:
    """Answers `text.upper()`; scripted failures by text; counts calls and concurrency."""

    def __init__(
        self,
        *,
        latency: float = 0.0,
        stream_limit: int | None = None,
        retry_after: float | None = None,
        hook: Callable[[list[str]], None] | None = None,
    ) -> None:
        self.latency = latency
        self.stream_limit = stream_limit
        self.retry_after = retry_after
        self.hook = hook
        self.calls: list[tuple[float, list[str]]] = []
        self.rejected: list[float] = []
        self.active = 0
        self.peak = 0
        self.flaked: set[str] = set()

    async def __aenter__(self) -> FakeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def answer(self, texts: list[str]) -> list[str]:
        self.calls.append((anyio.current_time(), texts))
        if self.hook is not None:
            self.hook(texts)
        if self.stream_limit is not None and self.active >= self.stream_limit:
            self.rejected.append(anyio.current_time())
            raise RateLimited(retry_after=self.retry_after)
        if "fatal" in texts:
            raise AuthenticationFailed("token rejected", status=401)
        if "bad" in texts:
            raise BadRequest("bad request", status=400, request_id="req-1")
        for text in texts:
            if text == "flaky" and text not in self.flaked:
                self.flaked.add(text)
                raise ServerError("busy", status=503)
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            delay = self.latency * (1000 if "slow" in texts else 1)
            if delay:
                await anyio.sleep(delay)
        finally:
            self.active -= 1
        return [t.upper() for t in texts]


def write_jobs(path: Path, texts: Sequence[str], *, ids: Sequence[str] | None = None) -> Path:
    with path.open("w") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"id": ids[i] if ids else f"j{i}", "text": text}) + "\n")
    return path
