"""The engine: one run of a job file through a bounded, self-tuning pool into Parquet parts.

    validate (whole file, nothing sent) -> open the checkpoint (what is done already)
    producer (thread: read, skip done, filter, pack) -> bounded stream -> N workers
    worker: budget.reserve -> limiter slot + run-wide cooldown -> kind.send, with retry
         -> outcomes -> bounded stream -> the single PartWriter -> committed parts

The parts, each readable alone: `pipeline` (producer -> stream -> workers), `sending` (a
worker's send loop: budget, limiter slot, retries), `outcomes` (result and failed rows),
`stopping` (signals and the grace period), `invalid_log` (OUT/invalid.jsonl).

The engine knows jobs only through `JobKind`. A run ends by running out of jobs, by a fatal
API error, by the budget, or by a signal; every way commits what was answered.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from batch.budget import Budget
from batch.checkpoint import Checkpoint
from batch.errors import (
    ApiError,
    BudgetExhausted,
    ClusterLost,
    GigabatchError,
    RunRefused,
)
from batch.eventlog import EventLog
from batch.invalid_log import OnProblem, invalid_log
from batch.limiter import AdaptiveLimiter
from batch.pipeline import run_pipeline
from batch.pricing import PriceTable
from batch.progress import Progress, ProgressMode
from batch.recording import AttemptRecorder
from batch.retry import RetryPolicy
from batch.sending import BatchSender, BudgetGate
from batch.stopping import RunStop
from batch.summary import RunStats, RunSummary, build_summary
from batch.writer import Outcomes, PartWriter
from jobs.base import Batch, Job, JobKind, Packer, Problem
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
    # A Ray cluster to run on (`local`, `auto` or an address; batch/cluster/), and how many
    # worker actors (None: one per CPU of the cluster).
    ray: str | None = None
    ray_workers: int | None = None


async def run_jobs(config: RunConfig) -> RunSummary:
    """Run `config` to its end and return its summary (also written to summary.json).
    Raises JobFileError, RunRefused or ConfigError before anything is sent."""
    if config.max_concurrency < 1:
        raise ValueError("max_concurrency must be at least 1")
    budgeted = config.max_cost is not None or config.max_tokens is not None
    if config.ray is not None:
        _refuse_on_cluster(config, budgeted)
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
            setting_hints=kind.setting_hints(),
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


def _refuse_on_cluster(config: RunConfig, budgeted: bool) -> None:
    if budgeted:
        raise RunRefused(
            "--max-cost/--max-tokens are not supported with --ray yet (budget reservations "
            "are not shared across the cluster): run budgeted jobs without --ray"
        )
    if config.client_factory is not None:
        raise RunRefused("a client_factory cannot be sent to Ray workers: give client_settings")


class Dispatch(Protocol):
    """Where a worker's batch goes: `BatchSender` here, or a cluster's `ClusterSender`."""

    async def send(self, client: GigaChatClient, batch: Batch) -> Outcomes | None: ...


class LimitReport(Protocol):
    """The concurrency a run settled at, and whether a 429 showed the server's limit."""

    def settled(self) -> float: ...

    @property
    def found_limit(self) -> bool: ...


class _Run:
    """One run while it executes: it wires the parts together and writes the summary.

        producer (thread: read, skip done, filter, pack) -> batches -> workers (BatchSender)
        workers -> outcomes -> PartWriter;  beside them: RunStop's grace and signals, Progress
    """

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
        self.duplicates = duplicates
        self.limiter = AdaptiveLimiter(config.max_concurrency, initial=config.initial_concurrency)
        self.stop = RunStop(self.limiter, config.grace_period)
        self.recorder = AttemptRecorder(events, self.limiter, stats.prices)
        self.sender = BatchSender(
            kind=self.kind,
            limiter=self.limiter,
            retry=config.retry,
            stats=stats,
            stop=self.stop,
            budget=BudgetGate(budget, self.stop) if budget is not None else None,
            recorder=self.recorder,
        )
        # Where batches go (this process's sender, or a cluster's workers) and who knows
        # the limit the run settled at.
        self.dispatch: Dispatch = self.sender
        self.limits: LimitReport = self.limiter

    def _client(self) -> AbstractAsyncContextManager[GigaChatClient]:
        if self.config.client_factory is not None:
            return self.config.client_factory()
        from batch.client import GigaChatClient

        settings = self.config.client_settings
        if settings is None:
            from batch.settings import ClientSettings

            settings = ClientSettings.from_env()
        return GigaChatClient(settings, max_connections=self.config.max_concurrency)

    @contextlib.asynccontextmanager
    async def _dispatcher(self, client: GigaChatClient) -> AsyncIterator[None]:
        """On a cluster: batches go to its workers while the block runs."""
        config = self.config
        if config.ray is None:
            yield
            return
        from batch.cluster.driver import ClusterPlan, open_cluster
        from batch.settings import ClientSettings

        plan = ClusterPlan(
            address=config.ray,
            kind=self.kind,
            settings=config.client_settings or ClientSettings.from_env(),
            retry=config.retry,
            max_concurrency=config.max_concurrency,
            initial_concurrency=config.initial_concurrency,
            workers=config.ray_workers,
            out_dir=config.out_dir,
        )
        async with open_cluster(plan, client, self.stats, self.stop) as cluster:
            self.dispatch = self.limits = self.stop.limiter = cluster
            yield

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
            async with (
                self._client() as client,
                self._dispatcher(client),
                anyio.create_task_group() as outer,
            ):
                outer.start_soon(writer.run, receive_out)
                async with anyio.create_task_group() as side:
                    if config.handle_signals:
                        side.start_soon(self.stop.watch_signals)
                    side.start_soon(progress.run)
                    side.start_soon(self.stop.grace)
                    async with send_out:
                        with self.stop.workers_scope:
                            await run_pipeline(
                                partial(self._produce, on_problem),
                                partial(self._work, client, send_out),
                                workers=config.max_concurrency,
                            )
                    side.cancel_scope.cancel()
        progress.close()
        return await self._summarise()

    async def _summarise(self) -> RunSummary:
        stop = self.stop
        ended = ApiError | BudgetExhausted | ClusterLost  # errors a summary reports
        if stop.error is not None and not isinstance(stop.error, ended):
            raise stop.error
        totals = self.checkpoint.totals
        status = stop.status
        if status == "completed" and totals.failed:
            status = "failed_rows"
        message = stop.message
        if not message:
            message = (
                f"{totals.succeeded} succeeded, {totals.failed} failed"
                if totals.failed
                else f"all {totals.succeeded} jobs succeeded"
            )
        summary = build_summary(
            status=status,
            message=message,
            stats=self.stats,
            totals=totals,
            settled=self.limits.settled(),
            limit_found=self.limits.found_limit,
            out_dir=self.config.out_dir,
        )
        await anyio.to_thread.run_sync(summary.write, self.config.out_dir)
        return summary

    def _invalid_log(self) -> contextlib.AbstractContextManager[OnProblem | None]:
        if not self.config.skip_invalid:
            return contextlib.nullcontext()
        return invalid_log(self.config.out_dir, self._count_invalid)

    def _count_invalid(self) -> None:
        self.stats.invalid += 1

    async def _produce(
        self, on_problem: OnProblem | None, send: MemoryObjectSendStream[Batch]
    ) -> None:
        with self.stop.producer_scope:
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
                    self.stop.stop("fatal", str(exc), exc)
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
        self, client: GigaChatClient, send: MemoryObjectSendStream[Outcomes], batch: Batch
    ) -> bool:
        """One batch of a worker: False once the run is stopping (the batch stays pending)."""
        if self.stop.stopping:
            return False
        outcomes = await self.dispatch.send(client, batch)
        if outcomes is not None:
            # Answered (and billed): hand it to the writer even if the grace period ends
            # now; the writer keeps reading until every worker is gone.
            with anyio.CancelScope(shield=True):
                await send.send(outcomes)
        return True
