"""Task results of GigaChat's batch API as output rows: each output line becomes the rows of
the jobs its task carried (results through `kind.outcomes`, errors as failed rows, both built
by `batch.outcomes` as online), handed to the run's PartWriter. Jobs already committed (a
collection cut short by a crash) are skipped. With a budget, each task settles here.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson

from batch.api_types import TaskResult, Usage
from batch.batches_budget import TaskBudget
from batch.checkpoint import DoneIds
from batch.errors import ApiError, error_from_response
from batch.outcomes import answered_batch, failed_batch, failure_row
from batch.summary import RunStats
from batch.writer import Outcomes, PartWriter
from jobs.base import Batch, JobFailure, JobKind

# Every row of a batch task was answered by one request of the server's: attempts is 1.
_ATTEMPTS = 1


class TaskRows:
    """Writes the rows of task results; `stats` counts them, `budget` settles them."""

    def __init__(
        self,
        kind: JobKind,
        writer: PartWriter,
        done: DoneIds,
        stats: RunStats,
        flush_rows: int,
        budget: TaskBudget | None = None,
    ) -> None:
        self.kind = kind
        self.writer = writer
        self.done = done
        self.stats = stats
        self.flush_rows = flush_rows
        self.budget = budget

    async def task_done(self, tasks: dict[str, Batch], result: TaskResult, latency: float) -> None:
        """Write the rows of one output line, and take its task out of `tasks`. `latency`:
        seconds from the file's submission to now (the rows' `latency_ms`)."""
        task_id = result.task_id or ""
        batch = tasks.pop(task_id, None)
        if batch is None:  # an unknown or repeated task id, or an invalid line's error
            return
        if result.result is None:
            status = result.error_status or 500
            body = orjson.dumps({"status": status, "message": result.error_message})
            await self.failed({task_id: batch}, error_from_response(status, {}, body))
            return
        try:
            answers = self.kind.outcomes(batch, result.result)
        except ApiError as exc:
            await self.failed({task_id: batch}, exc)
            return
        out = answered_batch(
            [a for a in answers if a.job.id not in self.done], _ATTEMPTS, latency
        )
        if self.budget is not None:
            answered_by = next((a.model for a in answers if not isinstance(a, JobFailure)), "")
            self.budget.settle(task_id, sum(out.usage.values(), Usage()), answered_by)
        await self._write(out)

    async def failed(self, tasks: Mapping[str, Batch], exc: ApiError) -> None:
        """Every job of `tasks` fails with `exc`: the server refused the task or the file,
        so nothing was billed (their reservations are released)."""
        out = Outcomes()
        for task_id, batch in tasks.items():
            if self.budget is not None:
                self.budget.release(task_id)
            out.failures += failed_batch(batch, exc, _ATTEMPTS).failures
        out.failures = [row for row in out.failures if row["id"] not in self.done]
        await self._write(out)

    async def lost(
        self, tasks: Mapping[str, Batch], error_class: str, message: str, status: int | None
    ) -> None:
        """Every job of `tasks` fails as `error_class`: tasks whose answer never came (no
        output line, the batch expired or is gone), so they count as billed at their ceiling."""
        out = Outcomes()
        for task_id, batch in tasks.items():
            if self.budget is not None:
                self.budget.charge(task_id)
            out.failures += [
                failure_row(
                    job,
                    error_class=error_class,
                    status=status,
                    message=message,
                    attempts=_ATTEMPTS,
                    request_id=None,
                )
                for job in batch.jobs
                if job.id not in self.done
            ]
        await self._write(out)

    async def _write(self, out: Outcomes) -> None:
        for model, usage in out.usage.items():
            self.stats.add_usage(model, usage)
        self.stats.succeeded += len(out.results)
        self.stats.failed += len(out.failures)
        self.writer.add(out)
        if self.writer.buffered >= self.flush_rows:
            await self.writer.flush()
