"""What a sent batch turns into for the writer: result rows, failed rows (built here and
only here, with the columns of `checkpoint.FAILED_SCHEMA`), and the usage billed by model.
Every result row says whether the answer came from the answer cache (`cached`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from batch.api_types import Usage
from batch.cache.answers import CachedAnswer
from batch.errors import ApiError
from batch.writer import Outcomes
from jobs.base import Batch, Job, JobFailure, JobKind, JobOutcome, JobResult

CACHED_COLUMN = "cached"


def with_cached_column(schema: pa.Schema) -> pa.Schema:
    """A kind's result schema with the engine's `cached` column (true: a cache hit)."""
    return schema.append(pa.field(CACHED_COLUMN, pa.bool_()))


def failure_row(
    job: Job,
    *,
    error_class: str,
    status: int | None,
    message: str,
    attempts: int,
    request_id: str | None,
) -> dict[str, Any]:
    """One row of `failed/` (with the job's kept input columns)."""
    return {
        **(job.kept or {}),
        "id": job.id,
        "error_class": error_class,
        "status": status,
        "message": message,
        "attempts": attempts,
        "request_id": request_id,
        "source": str(job.location),
    }


def failed_batch(batch: Batch, exc: ApiError, attempts: int) -> Outcomes:
    """Every job of a batch the API refused for good (or that ran out of attempts)."""
    out = Outcomes()
    for job in batch.jobs:
        out.failures.append(
            failure_row(
                job,
                error_class=type(exc).__name__,
                status=exc.status,
                message=exc.message,
                attempts=attempts,
                request_id=exc.request_id,
            )
        )
    return out


def answered_batch(answers: Sequence[JobOutcome], attempts: int, latency: float) -> Outcomes:
    """The rows of an answered batch: a result per answered job, a failed row per job the
    kind failed on its own (e.g. a text over the input limit), usage by answering model."""
    out = Outcomes()
    latency_ms = round(latency * 1000.0, 3)
    for outcome in answers:
        if isinstance(outcome, JobFailure):
            out.failures.append(
                failure_row(
                    outcome.job,
                    error_class=outcome.error_class,
                    status=outcome.status,
                    message=outcome.message,
                    attempts=attempts,
                    request_id=outcome.request_id,
                )
            )
            continue
        row = {**(outcome.job.kept or {}), **outcome.row}
        row["id"] = outcome.job.id
        row["attempts"] = attempts
        row["latency_ms"] = latency_ms
        row[CACHED_COLUMN] = False
        out.results.append(row)
        out.usage[outcome.model] = out.usage.get(outcome.model, Usage()) + outcome.usage
        out.unknown_usage += not outcome.usage_known
    return out


def reused_batch(results: Sequence[JobResult], *, cached: bool) -> Outcomes:
    """The rows of answers not sent by this run: cache hits (`cached`, unbilled) or answers
    an earlier leg received and journalled (billed by that leg). Nothing was attempted."""
    out = Outcomes()
    for result in results:
        row = {**(result.job.kept or {}), **result.row}
        row["id"] = result.job.id
        row["attempts"] = 0
        row["latency_ms"] = 0.0
        row[CACHED_COLUMN] = cached
        out.results.append(row)
        if not cached:
            out.usage[result.model] = out.usage.get(result.model, Usage()) + result.usage
    return out


def cached_batch(
    kind: JobKind, hits: Sequence[tuple[Job, CachedAnswer]], schema: pa.Schema
) -> Outcomes:
    """The rows of cache hits, as `reused_batch(cached=True)` makes them, but as one table
    of `schema` (the writer's) when the kind builds its columns at once: no Python object
    per value nor dict per row. Jobs carrying kept input columns go row by row."""
    jobs = [job for job, _ in hits]
    columns = None
    if not any(job.kept for job in jobs):
        columns = kind.cached_columns(jobs, [answer for _, answer in hits])
    if columns is None:
        return reused_batch([kind.cached_row(job, answer) for job, answer in hits], cached=True)
    n = len(jobs)
    columns = {
        **columns,
        "id": pa.array([job.id for job in jobs], pa.string()),
        "attempts": pa.repeat(pa.scalar(0, pa.int32()), n),
        "latency_ms": pa.repeat(pa.scalar(0.0, pa.float64()), n),
        CACHED_COLUMN: pa.repeat(pa.scalar(True), n),
    }
    if set(columns) != set(schema.names):
        raise ValueError(f"cached columns {sorted(columns)} are not those of {schema.names}")
    table = pa.Table.from_arrays([columns[name] for name in schema.names], schema=schema)
    return Outcomes(tables=[table])
