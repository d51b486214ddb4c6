"""Task results of GigaChat's batch API as output rows: each output line becomes the rows of
the jobs its task carried (results through `kind.outcomes`, errors as failed rows), handed to
the run's PartWriter. Jobs already committed (a collection cut short by a crash) are skipped.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from batch.api_types import TaskResult, Usage
from batch.checkpoint import DoneIds
from batch.errors import ApiError, error_from_response
from batch.summary import RunStats
from batch.writer import Outcomes, PartWriter
from jobs.base import Batch, JobFailure, JobKind, JobOutcome


class TaskRows:
    """Writes the rows of task results; `stats` counts them."""

    def __init__(
        self, kind: JobKind, writer: PartWriter, done: DoneIds, stats: RunStats, flush_rows: int
    ) -> None:
        self.kind = kind
        self.writer = writer
        self.done = done
        self.stats = stats
        self.flush_rows = flush_rows

    async def task_done(self, tasks: dict[str, Batch], result: TaskResult) -> None:
        """Write the rows of one output line, and take its task out of `tasks`."""
        batch = tasks.pop(result.task_id or "", None)
        if batch is None:  # an unknown or repeated task id, or an invalid line's error
            return
        if result.result is None:
            status = result.error_status or 500
            body = orjson.dumps({"status": status, "message": result.error_message})
            await self.fail_with([batch], error_from_response(status, {}, body))
            return
        try:
            outcomes = self.kind.outcomes(batch, result.result)
        except ApiError as exc:
            await self.fail_with([batch], exc)
            return
        await self.write(outcomes)

    async def write(self, outcomes: Iterable[JobOutcome]) -> None:
        """Buffer rows for the writer, skipping jobs committed before a crash."""
        out = Outcomes()
        outcome: JobOutcome
        for outcome in outcomes:
            if outcome.job.id in self.done:
                continue
            if isinstance(outcome, JobFailure):
                out.failures.append(_failed_row(outcome))
                continue
            row = {
                **(outcome.job.kept or {}),
                **outcome.row,
                "id": outcome.job.id,
                "attempts": 1,
                "latency_ms": None,
            }
            out.results.append(row)
            out.usage[outcome.model] = out.usage.get(outcome.model, Usage()) + outcome.usage
            self.stats.add_usage(outcome.model, outcome.usage)
        self.stats.succeeded += len(out.results)
        self.stats.failed += len(out.failures)
        self.writer.add(out)
        if self.writer.buffered >= self.flush_rows:
            await self.writer.flush()

    async def fail_with(self, batches: list[Batch], exc: ApiError) -> None:
        await self.fail(batches, type(exc).__name__, exc.message, exc.status, exc.request_id)

    async def fail(
        self,
        batches: list[Batch],
        error_class: str,
        message: str,
        status: int | None = None,
        request_id: str | None = None,
    ) -> None:
        failures = [
            JobFailure(job, error_class, message, status, request_id)
            for batch in batches
            for job in batch.jobs
        ]
        await self.write(failures)



def _failed_row(failure: JobFailure) -> dict[str, Any]:
    return {
        **(failure.job.kept or {}),
        "id": failure.job.id,
        "error_class": failure.error_class,
        "status": failure.status,
        "message": failure.message,
        "attempts": 1,
        "request_id": failure.request_id,
        "source": str(failure.job.location),
    }
