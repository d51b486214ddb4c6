"""The engine: one run of a job file through a bounded, self-tuning pool into Parquet parts.

    validate (whole file, nothing sent) -> open the checkpoint (what is done already)
    producer (thread: read, skip done, filter, pack) -> bounded stream -> N workers
    worker: budget.reserve -> limiter slot + run-wide cooldown -> kind.send, with retry
         -> outcomes -> bounded stream -> the single PartWriter -> committed parts

The engine knows jobs only through `JobKind`. A run ends by running out of jobs, by a fatal
API error, by the budget, or by a signal; every way commits what was answered.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import anyio
import orjson
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from batch.api_types import Usage
from batch.budget import Budget, Reservation
from batch.checkpoint import INVALID, Checkpoint
from batch.errors import (
    ApiError,
    BudgetExhausted,
    ConnectionFailed,
    FatalError,
    GigabatchError,
    RateLimited,
    RequestTimedOut,
)
from batch.eventlog import EventLog
from batch.limiter import AdaptiveLimiter
from batch.pricing import PriceTable
from batch.progress import Progress, ProgressMode
from batch.recording import AttemptRecorder
from batch.retry import RetryPolicy, call_with_retry
from batch.summary import RunStats, RunSummary, build_summary
from batch.writer import Outcomes, PartWriter
from jobs.base import Batch, Job, JobFailure, JobKind, JobOutcome, Packer, Problem
from jobs.readers import read_jobs, validate_jobs

if TYPE_CHECKING:
    from batch.client import GigaChatClient
    from batch.settings import ClientSettings

# Jobs the producer thread reads per hop to the thread (amortises the hop's cost).
_READ_CHUNK = 512


@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs. `client_factory` (tests, embedding callers) replaces the
    client built from `client_settings`. With `max_cost` or `max_tokens` the run uses
    `kind.bounded()`, so every request's worst case is known before it is sent."""

    jobs_path: Path
    out_dir: Path
    kind: JobKind
    client_settings: ClientSettings | None = None
    client_factory: Callable[[], AbstractAsyncContextManager[GigaChatClient]] | None = None
    max_concurrency: int = 16
    initial_concurrency: int = 2
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    flush_interval: float = 2.0
    flush_rows: int = 2000
    grace_period: float = 5.0
    skip_invalid: bool = False
    restart: bool = False
    retry_failed: bool = False
    prices: PriceTable | None = None
    max_cost: float | None = None
    max_tokens: int | None = None
    job_filter: Callable[[Job], bool] | None = None
    progress: ProgressMode = "auto"
    progress_interval: float | None = None
    handle_signals: bool = True


class _Stopped(Exception):
    """The run is stopping: this batch is not sent (it stays pending for a resume)."""



async def run_jobs(config: RunConfig) -> RunSummary:
    """Run `config` to its end and return its summary (also written to summary.json).
    Raises JobFileError, RunRefused or ConfigError before anything is sent."""
    if config.max_concurrency < 1:
        raise ValueError("max_concurrency must be at least 1")
    budgeted = config.max_cost is not None or config.max_tokens is not None
    if budgeted:
        # A reservation only bounds what a request can cost when the request itself is
        # bounded (chat: max_tokens on every request); the cap is then in the fingerprint.
        config = dataclasses.replace(config, kind=config.kind.bounded())
    kind = config.kind
    prices = config.prices if config.prices is not None else PriceTable.load()
    report = await anyio.to_thread.run_sync(partial(validate_jobs, config.jobs_path, kind))
    if not config.skip_invalid:
        report.raise_for_problems()
    checkpoint = await anyio.to_thread.run_sync(
        partial(
            Checkpoint.open,
            config.out_dir,
            kind=kind.name,
            input_path=str(config.jobs_path),
            input_fingerprint=report.fingerprint,
            settings=kind.answer_settings(),
            total_jobs=report.jobs,
            restart=config.restart,
            retry_failed=config.retry_failed,
        )
    )
    stats = RunStats(
        kind=kind.name,
        prices=prices,
        total_jobs=report.jobs,
        done_before=len(checkpoint.done),
        max_concurrency=config.max_concurrency,
    )
    budget = None
    if budgeted:
        spent = checkpoint.totals.tokens
        budget = Budget(
            max_cost=config.max_cost,
            max_tokens=config.max_tokens,
            prices=prices,
            spent_cost=checkpoint.totals.cost(prices),
            spent_tokens=spent.prompt_tokens + spent.completion_tokens,
        )
    events = await anyio.to_thread.run_sync(
        partial(
            EventLog.open,
            config.out_dir,
            max_concurrency=config.max_concurrency,
            max_cost=config.max_cost,
            max_tokens=config.max_tokens,
            done_before=len(checkpoint.done),
            total_jobs=report.jobs,
            restart=config.restart,
        )
    )
    run = _Run(config, checkpoint, stats, budget, report.duplicates, events)
    try:
        return await run.execute()
    finally:
        run.recorder.close()


class _Run:
    """The state of one run while it executes."""

    def __init__(
        self,
        config: RunConfig,
        checkpoint: Checkpoint,
        stats: RunStats,
        budget: Budget | None,
        duplicates: list[Problem],
        events: EventLog,
    ) -> None:
        self.config = config
        self.kind = config.kind
        self.checkpoint = checkpoint
        self.stats = stats
        self.budget = budget
        self.duplicates = duplicates
        self.limiter = AdaptiveLimiter(
            config.max_concurrency, initial=config.initial_concurrency
        )
        self.recorder = AttemptRecorder(events, self.limiter, stats.prices)
        self.status = "completed"
        self.message = ""
        self.stopping = False
        self.error: GigabatchError | None = None
        self._producer_scope = anyio.CancelScope()
        self._workers_scope = anyio.CancelScope()
        self._budget_changed = anyio.Event()
        self._stopped = anyio.Event()
        self._default_model = str(self.kind.answer_settings().get("model") or "")

    # --- stopping -------------------------------------------------------------------

    def stop(self, status: str, message: str) -> None:
        """Stop taking jobs; requests in flight get the grace period. The first reason wins."""
        if self.stopping:
            return
        self.stopping = True
        self._stopped.set()
        self.status = status
        self.message = message
        self._producer_scope.cancel()

    async def _grace(self) -> None:
        """Once stopping: cancel the workers when nothing is in flight any more (the rest
        only wait for a slot, a pause or a backoff) or when the grace period is over."""
        await self._stopped.wait()
        with anyio.move_on_after(self.config.grace_period):
            while self.limiter.in_flight > 0:
                await self.limiter.wait_changed()
        self._workers_scope.cancel()

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                if self.stopping:  # a second signal: stop waiting for requests in flight
                    self._workers_scope.cancel()
                    continue
                if signum == signal.SIGINT:
                    self.stop("interrupted", "interrupted (Ctrl-C); answered jobs are committed")
                else:
                    self.stop("terminated", "terminated (SIGTERM); answered jobs are committed")

    # --- the pipeline ---------------------------------------------------------------

    def _client(self) -> AbstractAsyncContextManager[Any]:
        if self.config.client_factory is not None:
            return self.config.client_factory()
        from batch.client import GigaChatClient

        settings = self.config.client_settings
        if settings is None:
            from batch.settings import ClientSettings

            settings = ClientSettings.from_env()
        return GigaChatClient(settings, max_connections=self.config.max_concurrency)

    async def execute(self) -> RunSummary:
        config = self.config
        progress = Progress(self.stats, config.progress, interval=config.progress_interval)
        writer = PartWriter(
            self.checkpoint,
            self.kind.result_schema(),
            flush_interval=config.flush_interval,
            flush_rows=config.flush_rows,
        )
        send_out, receive_out = anyio.create_memory_object_stream[Outcomes](
            config.max_concurrency * 2
        )
        with self._invalid_log() as on_problem:
            async with self._client() as client, anyio.create_task_group() as outer:
                outer.start_soon(writer.run, receive_out)
                async with anyio.create_task_group() as side:
                    if config.handle_signals:
                        side.start_soon(self._watch_signals)
                    side.start_soon(progress.run)
                    side.start_soon(self._grace)
                    async with send_out:
                        await self._pipeline(client, send_out, on_problem)
                    side.cancel_scope.cancel()
        progress.close()
        if self.error is not None and not isinstance(self.error, ApiError | BudgetExhausted):
            raise self.error
        if self.status == "completed" and self.checkpoint.totals.failed:
            self.status = "failed_rows"
        if not self.message:
            totals = self.checkpoint.totals
            self.message = (
                f"{totals.succeeded} succeeded, {totals.failed} failed"
                if totals.failed
                else f"all {totals.succeeded} jobs succeeded"
            )
        summary = build_summary(
            status=self.status,
            message=self.message,
            stats=self.stats,
            totals=self.checkpoint.totals,
            settled=self.limiter.settled(),
            limit_found=self.limiter.found_limit,
            out_dir=config.out_dir,
        )
        await anyio.to_thread.run_sync(summary.write, config.out_dir)
        return summary

    @contextlib.contextmanager
    def _invalid_log(self) -> Iterator[Callable[[Problem], None] | None]:
        """With --skip-invalid, every skipped record goes to OUT/invalid.jsonl (rewritten
        by each run, which reads the whole input again)."""
        if not self.config.skip_invalid:
            yield None
            return
        path = self.config.out_dir / INVALID
        with path.open("wb") as handle:
            yield partial(self._log_problem, handle)

    def _log_problem(self, handle: IO[bytes], problem: Problem) -> None:
        self.stats.invalid += 1
        loc = problem.location
        handle.write(
            orjson.dumps(
                {
                    "file": loc.file,
                    loc.unit: loc.number,
                    "field": problem.field,
                    "message": problem.message,
                }
            )
            + b"\n"
        )

    async def _pipeline(
        self,
        client: Any,
        send_out: MemoryObjectSendStream[Outcomes],
        on_problem: Callable[[Problem], None] | None,
    ) -> None:
        send_batches, receive_batches = anyio.create_memory_object_stream[Batch](
            self.config.max_concurrency * 2
        )
        with self._workers_scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._produce, send_batches, on_problem)
                async with receive_batches:
                    for _ in range(self.config.max_concurrency):
                        tg.start_soon(
                            self._work, client, receive_batches.clone(), send_out.clone()
                        )

    async def _produce(
        self,
        send: MemoryObjectSendStream[Batch],
        on_problem: Callable[[Problem], None] | None,
    ) -> None:
        async with send:
            with self._producer_scope:
                jobs = read_jobs(
                    self.config.jobs_path,
                    self.kind,
                    skip_invalid=self.config.skip_invalid,
                    on_problem=on_problem,
                    exclude=self.duplicates,
                )
                packer = self.kind.packer()
                finished = False
                while not finished:
                    try:
                        batches, finished = await anyio.to_thread.run_sync(
                            self._next_batches, jobs, packer
                        )
                    except GigabatchError as exc:  # the input changed under the run
                        self.error = exc
                        self.stop("fatal", str(exc))
                        return
                    for batch in batches:
                        await send.send(batch)

    def _next_batches(self, jobs: Iterator[Job], packer: Packer) -> tuple[list[Batch], bool]:
        """Read up to a chunk of jobs (in a thread): skip done and filtered-out ones, pack
        the rest. Returns the batches that became full, and whether the input is over."""
        done = self.checkpoint.done
        check_done = len(done) > 0
        keep = self.config.job_filter
        batches: list[Batch] = []
        for _ in range(_READ_CHUNK):
            job = next(jobs, None)
            if job is None:
                batches.extend(packer.flush())
                return batches, True
            if (check_done and job.id in done) or (keep is not None and not keep(job)):
                self.stats.skipped += 1
                continue
            batches.extend(packer.add(job))
        return batches, False

    async def _work(
        self,
        client: Any,
        receive: MemoryObjectReceiveStream[Batch],
        send: MemoryObjectSendStream[Outcomes],
    ) -> None:
        async with receive, send:
            async for batch in receive:
                if self.stopping:
                    return
                outcomes = await self._process(client, batch)
                if outcomes is not None:
                    # Answered (and billed): hand it to the writer even if the grace period
                    # ends now; the writer keeps reading until every worker is gone.
                    with anyio.CancelScope(shield=True):
                        await send.send(outcomes)

    # --- one batch ------------------------------------------------------------------

    def _model(self, batch: Batch) -> str:
        model = batch.jobs[0].request.get("model") if batch.jobs else None
        return str(model) if model else self._default_model

    async def _reserve(self, batch: Batch) -> Reservation | None:
        """Hold the batch's worst-case cost, waiting while requests in flight might still
        settle below their reservations; stops the run when it can never fit."""
        if self.budget is None:
            return None
        ceiling = self.kind.reserve(batch)
        model = self._model(batch)
        while True:
            try:
                return self.budget.reserve(ceiling, model)
            except BudgetExhausted as exc:
                if self.budget.crossing(ceiling, model, with_reserved=False) is not None:
                    self.stop("budget", f"budget reached; {self.budget.describe()}")
                    self.error = exc
                    raise _Stopped from None
            changed = self._budget_changed
            await changed.wait()
            if self.stopping:
                raise _Stopped

    def _budget_moved(self) -> None:
        self._budget_changed.set()
        self._budget_changed = anyio.Event()

    async def _process(self, client: Any, batch: Batch) -> Outcomes | None:
        """Send one batch with retries; its outcomes, or None when the run stops first."""
        limiter = self.limiter
        recorder = self.recorder
        stats = self.stats
        kind = self.kind
        attempts = 0
        latency = 0.0
        reservation: Reservation | None = None

        async def attempt() -> Any:
            nonlocal attempts, latency, reservation
            if reservation is None and self.budget is not None:
                reservation = await self._reserve(batch)  # the last attempt's was charged
            ticket = await limiter.acquire()
            if self.stopping:
                limiter.release(ticket)
                raise _Stopped
            attempts += 1
            stats.requests += 1
            stats.concurrency = limiter.limit
            try:
                result = await kind.send(client, batch)
            except RateLimited as exc:
                limiter.rate_limited_by_server(ticket, exc.retry_after)
                recorder.failed(ticket, len(batch.jobs), exc)
                stats.rate_limited += 1
                raise
            except (RequestTimedOut, ConnectionFailed) as exc:
                limiter.release(ticket)
                recorder.failed(ticket, len(batch.jobs), exc)
                self._charge_unseen(reservation)
                reservation = None
                raise
            except BaseException as exc:
                limiter.release(ticket)
                recorder.failed(ticket, len(batch.jobs), exc)
                raise
            latency = time.monotonic() - ticket.sent_at
            limiter.succeeded(ticket)
            recorder.answered(ticket, len(batch.jobs), result)
            return result

        try:
            reservation = await self._reserve(batch)
        except _Stopped:
            return None
        try:
            answers = await call_with_retry(attempt, self.config.retry)
        except _Stopped:
            self._release(reservation)
            return None
        except FatalError as exc:
            self._release(reservation)
            self.error = exc
            self.stop("fatal", str(exc))
            return None
        except ApiError as exc:  # permanent, or retryable and out of attempts
            self._release(reservation)
            stats.retries += max(0, attempts - 1)
            return self._failed(batch, exc, attempts)
        except BaseException:
            self._release(reservation)
            raise
        stats.retries += attempts - 1
        return self._outcomes(answers, attempts, latency, reservation)

    def _charge_unseen(self, reservation: Reservation | None) -> None:
        """A request that timed out or lost its connection may still have been answered
        and billed: it counts as spent at its ceiling, and a retry reserves anew."""
        if reservation is not None and self.budget is not None:
            ceiling = Usage(prompt_tokens=reservation.tokens)
            self.budget.settle(reservation, ceiling, reservation.model)
            self._budget_moved()

    def _release(self, reservation: Reservation | None) -> None:
        if reservation is not None and self.budget is not None:
            self.budget.release(reservation)
            self._budget_moved()

    def _outcomes(
        self,
        answers: Any,
        attempts: int,
        latency: float,
        reservation: Reservation | None,
    ) -> Outcomes:
        out = Outcomes()
        latency_ms = round(latency * 1000.0, 3)
        total = Usage()
        answered_by = ""
        stats = self.stats
        outcome: JobOutcome
        for outcome in answers:
            if isinstance(outcome, JobFailure):
                out.failures.append(
                    {
                        "id": outcome.job.id,
                        "error_class": outcome.error_class,
                        "status": outcome.status,
                        "message": outcome.message,
                        "attempts": attempts,
                        "request_id": outcome.request_id,
                        "source": str(outcome.job.location),
                    }
                )
                continue
            row = dict(outcome.row)
            row["id"] = outcome.job.id
            row["attempts"] = attempts
            row["latency_ms"] = latency_ms
            out.results.append(row)
            usage = outcome.usage
            answered_by = outcome.model
            out.usage[answered_by] = out.usage.get(answered_by, Usage()) + usage
            total = total + usage
        for model, usage in out.usage.items():
            stats.add_usage(model, usage)
        stats.succeeded += len(out.results)
        stats.failed += len(out.failures)
        if reservation is not None and self.budget is not None:
            self.budget.settle(reservation, total, answered_by or reservation.model)
            self._budget_moved()
        return out

    def _failed(self, batch: Batch, exc: ApiError, attempts: int) -> Outcomes:
        out = Outcomes()
        for job in batch.jobs:
            out.failures.append(
                {
                    "id": job.id,
                    "error_class": type(exc).__name__,
                    "status": exc.status,
                    "message": exc.message,
                    "attempts": attempts,
                    "request_id": exc.request_id,
                    "source": str(job.location),
                }
            )
        self.stats.failed += len(batch.jobs)
        return out
