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
from batch.checkpoint import FAILED_SCHEMA, Checkpoint
from batch.errors import (
    ApiError,
    BudgetExhausted,
    ClusterLost,
    GigabatchError,
    OutputError,
    RunRefused,
)
from batch.eventlog import EventLog
from batch.failures import failure_classes
from batch.invalid_log import OnProblem, invalid_log
from batch.limiter import AdaptiveLimiter, Cooldown
from batch.outage import DEFAULT_MAX_OUTAGE, Outage
from batch.outcomes import reused_batch, with_cached_column
from batch.pipeline import run_pipeline
from batch.preflight import check_service
from batch.pricing import PriceTable
from batch.progress import Progress, ProgressMode, RunStart
from batch.recording import AttemptRecorder
from batch.retry import RetryPolicy
from batch.reuse import RunReuse
from batch.run_lock import RunLock
from batch.sending import BatchSender, BudgetGate
from batch.stalls import HEADROOM
from batch.stopping import EarlySignals, RunStop
from batch.storage import check_writable, output_errors
from batch.summary import RunStats, RunSummary, build_summary, run_outcome
from batch.writer import Outcomes, PartWriter
from jobs.base import Batch, Job, JobKind, JobResult, Packer, Problem, SourceLocation
from jobs.passthrough import KeepSpec
from jobs.readers import ValidationReport, read_jobs, validate_jobs

if TYPE_CHECKING:
    from batch.client import GigaChatClient
    from batch.settings import ClientSettings

# Jobs the producer thread reads per hop to the thread (amortises the hop's cost).
_READ_CHUNK = 512


@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs. `client_factory` (tests, embedding callers) replaces the
    client built from `client_settings`. With `max_cost` or `max_tokens` the run uses
    `kind.bounded()`, so every request's worst case is known before it is sent. A client
    built from `client_settings` is checked before the first job (batch/preflight.py); one
    from `client_factory` is the caller's to check. An outage longer than `max_outage`
    seconds stops the run."""

    jobs_path: Path
    out_dir: Path
    kind: JobKind
    client_settings: ClientSettings | None = None
    client_factory: Callable[[], AbstractAsyncContextManager[GigaChatClient]] | None = None
    max_concurrency: int = 16
    initial_concurrency: int = 2
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_outage: float = DEFAULT_MAX_OUTAGE
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
    keep_columns: tuple[str, ...] = ()
    progress: ProgressMode = "auto"
    progress_interval: float | None = None
    handle_signals: bool = True
    disk_wait: float = 600.0
    locked_by_caller: bool = False  # the caller holds out_dir's RunLock (estimate --sample)
    # The answer cache: None uses it when the kind's answers are cached by default
    # (embeddings); `cache_dir` None is GIGABATCH_CACHE_DIR, else the user cache directory.
    cache: bool | None = None
    cache_dir: Path | None = None
    # Write only the rows whose id is new or whose answer changed since this earlier output,
    # and the ids that disappeared (OUT/removed/).
    changed_since: Path | None = None
    # A Ray cluster to run on (`local`, `auto` or an address; batch/cluster/), and how many
    # worker actors (None: one per CPU of the cluster).
    ray: str | None = None
    ray_workers: int | None = None


def open_client(
    config: RunConfig,
    max_connections: int,
    *,
    send_check: Callable[[], None] | None = None,
) -> AbstractAsyncContextManager[GigaChatClient]:
    """The client of a run: `config.client_factory`'s, else one from `config.client_settings`
    (else the environment) with a pool of `max_connections`."""
    if config.client_factory is not None:
        return config.client_factory()
    from batch.client import GigaChatClient

    settings = config.client_settings
    if settings is None:
        from batch.settings import ClientSettings

        settings = ClientSettings.from_env()
    return GigaChatClient(settings, max_connections=max_connections, send_check=send_check)


async def run_jobs(config: RunConfig) -> RunSummary:
    """Run `config` to its end and return its summary (also written to summary.json).

    The output directory is locked for the whole run (OutputLocked when another run holds
    it). Raises JobFileError, RunRefused, ConfigError, OutputError or Interrupted before
    anything is sent, and OutputError when answers could not be committed."""
    if config.max_concurrency < 1:
        raise ValueError("max_concurrency must be at least 1")
    budgeted = config.max_cost is not None or config.max_tokens is not None
    if config.ray is not None:
        _refuse_on_cluster(config, budgeted)
    if budgeted:
        # A reservation only bounds what a request can cost when the request itself is
        # bounded (chat: max_tokens on every request); the cap is then in the fingerprint.
        config = dataclasses.replace(config, kind=config.kind.bounded())
    lock = None
    if not config.locked_by_caller:
        lock = await anyio.to_thread.run_sync(RunLock.acquire, config.out_dir)
    try:
        await anyio.to_thread.run_sync(check_writable, config.out_dir)
        run = await _prepare_watching_signals(config)
        finished = False
        try:
            summary = await run.execute()
            finished = summary.status in ("completed", "failed_rows")
            return summary
        finally:
            run.recorder.close()
            await anyio.to_thread.run_sync(partial(run.close_reuse, finished=finished))
    finally:
        if lock is not None:
            lock.release()


async def _prepare_watching_signals(config: RunConfig) -> _Run:
    """`_prepare`, with Ctrl-C and SIGTERM turned into Interrupted meanwhile."""
    early = EarlySignals()
    prepared: _Run | GigabatchError
    async with anyio.create_task_group() as signals:
        if config.handle_signals:
            signals.start_soon(early.watch)
        try:
            prepared = await _prepare(config, early)
        except GigabatchError as exc:  # raised outside the group, not in an ExceptionGroup
            prepared = exc
        signals.cancel_scope.cancel()
    if isinstance(prepared, GigabatchError):
        raise prepared
    return prepared


async def _prepare(config: RunConfig, early: EarlySignals) -> _Run:
    """Validate the input and open the checkpoint (in threads; a signal stops both)."""
    kind = config.kind
    budgeted = config.max_cost is not None or config.max_tokens is not None
    prices = config.prices if config.prices is not None else PriceTable.load()
    keep = keep_spec(kind, config.keep_columns)
    validate = partial(
        validate_jobs, config.jobs_path, kind, keep=keep, interrupt_check=early.check
    )
    report = await anyio.to_thread.run_sync(validate)
    if not config.skip_invalid:
        report.raise_for_problems()
    settings = dict(kind.answer_settings())
    if config.changed_since is not None:
        settings["changed_since"] = str(config.changed_since.resolve())
    checkpoint = await anyio.to_thread.run_sync(
        partial(
            Checkpoint.open,
            config.out_dir,
            kind=kind.name,
            input_path=str(config.jobs_path),
            input_fingerprint=report.fingerprint,
            settings={**settings, **keep.settings()},
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
        failed_before=checkpoint.totals.failed,
        max_concurrency=config.max_concurrency,
    )
    budget = None
    if budgeted:
        budget = Budget.over_output(
            max_cost=config.max_cost,
            max_tokens=config.max_tokens,
            prices=prices,
            totals=checkpoint.totals,
        )
    early.check()
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
    reuse = await anyio.to_thread.run_sync(
        partial(
            RunReuse.open,
            kind,
            config.out_dir,
            cache=config.cache,
            cache_dir=config.cache_dir,
            changed_since=config.changed_since,
            client_settings=config.client_settings,
            restart=config.restart,
        )
    )
    start = _run_start(config, report, len(checkpoint.done), prices)
    return _Run(config, checkpoint, stats, budget, report, events, start, reuse)


def keep_spec(kind: JobKind, columns: tuple[str, ...]) -> KeepSpec:
    """What `--keep-columns` keeps for `kind` (and the user's id column, under its name)."""
    sources = kind.source_fields()
    return KeepSpec.parse(
        columns,
        job_fields=sources.values(),
        reserved={*kind.result_schema().names, *FAILED_SCHEMA.names},
        id_column=sources.get("id"),
    )


def _run_start(
    config: RunConfig, report: ValidationReport, done_before: int, prices: PriceTable
) -> RunStart:
    """What the start line says of this run."""
    limits = []
    if config.max_cost is not None:
        limits.append(f"{config.max_cost:.2f} {prices.currency}")
    if config.max_tokens is not None:
        limits.append(f"{config.max_tokens} tokens")
    return RunStart(
        jobs_path=config.jobs_path,
        out_dir=config.out_dir,
        kind=config.kind.name,
        model=config.kind.answer_settings().get("model"),
        total_jobs=report.jobs,
        done_before=done_before,
        max_concurrency=config.max_concurrency,
        budget=" and ".join(limits) or None,
        invalid=report.invalid_records,
    )


@dataclass
class _Chunk:
    """What the producer made of one chunk of jobs."""

    batches: list[Batch] = field(default_factory=list)
    reused: list[Outcomes] = field(default_factory=list)
    finished: bool = False


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
        report: ValidationReport,
        events: EventLog,
        start: RunStart,
        reuse: RunReuse,
    ) -> None:
        self.config = config
        self.start = start
        self.kind = config.kind
        self.checkpoint = checkpoint
        self.stats = stats
        self.duplicates = report.duplicates
        self.kept = report.kept
        self._last_invalid: SourceLocation | None = None
        self.reuse = reuse
        self.recalled = reuse.limit.recall() if reuse.limit is not None else None
        self.progress = Progress(
            stats, config.progress, interval=config.progress_interval, pause=self._pause
        )
        self.limiter = AdaptiveLimiter(
            config.max_concurrency,
            initial=config.initial_concurrency,
            remembered=self.recalled,
            cooldown=Cooldown(announce=self.progress.announce),
            outage=Outage(max_outage=config.max_outage, announce=self.progress.announce),
        )
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
            on_answers=reuse.answers.keep,
        )
        # Where batches go (this process's sender, or a cluster's workers) and who knows
        # the limit the run settled at.
        self.dispatch: Dispatch = self.sender
        self.limits: LimitReport = self.limiter

    def close_reuse(self, *, finished: bool) -> None:
        """Commit the answers handed to the cache or journal, and remember the limit."""
        reuse = self.reuse
        reuse.answers.close(finished=finished)
        if reuse.limit is not None and self.stats.requests:
            reuse.limit.keep(self.limiter, recalled=self.recalled)

    def _client(self) -> AbstractAsyncContextManager[GigaChatClient]:
        return open_client(
            self.config,
            self.config.max_concurrency * HEADROOM,
            send_check=self.limiter.cooldown.check_send,
        )

    def _workers(self) -> int:
        """HEADROOM workers per slot, so hung requests cannot hold them all; a budgeted run
        keeps one per slot, since each waiting worker would hold a budget reservation."""
        per_slot = 1 if self.sender.budget is not None else HEADROOM
        return self.config.max_concurrency * per_slot

    def _pause(self) -> str:
        """The run-wide pause in force, for the progress line ("" when none)."""
        outage = self.limiter.outage
        if outage.active:
            return f"PAUSED: API unreachable for {outage.elapsed:.0f}s, probing"
        remaining = self.limiter.cooldown.remaining
        return f"PAUSED {remaining:.1f}s after 429s" if remaining >= 0.5 else ""

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
        progress = self.progress
        progress.start_line(self.start)
        kept = self.kept
        writer = PartWriter(
            self.checkpoint,
            with_cached_column(
                kept.extend(self.kind.result_schema()) if kept else self.kind.result_schema()
            ),
            flush_interval=config.flush_interval,
            flush_rows=config.flush_rows,
            on_error=partial(self._commit_failed, progress),
            disk_wait=config.disk_wait,
            failed_schema=kept.extend(FAILED_SCHEMA) if kept else FAILED_SCHEMA,
        )
        send_out, receive_out = anyio.create_memory_object_stream[Outcomes](
            config.max_concurrency * 2
        )
        with self._invalid_log() as on_problem:
            async with self._client() as client:
                if config.client_factory is None:
                    await check_service(client, self.kind.answer_settings().get("model"))
                async with self._dispatcher(client), anyio.create_task_group() as outer:
                    outer.start_soon(writer.run, receive_out)
                    async with anyio.create_task_group() as side:
                        if config.handle_signals:
                            side.start_soon(self.stop.watch_signals)
                        side.start_soon(progress.run)
                        side.start_soon(self.limiter.watch_stalls)
                        side.start_soon(self.stop.grace)
                        async with send_out:
                            with self.stop.workers_scope:
                                await run_pipeline(
                                    partial(self._produce, on_problem, send_out),
                                    partial(self._work, client, send_out),
                                    workers=self._workers(),
                                )
                        side.cancel_scope.cancel()
        progress.close()
        error = writer.outcome()
        if error is not None:
            raise error
        return await self._summarise()

    def _commit_failed(self, progress: Progress, error: OutputError) -> None:
        """The disk is (nearly) full: stop sending, commit or keep the answered rows."""
        self.stop.stop("fatal", str(error), error)
        progress.notice(
            f"{error}; the run stops sending, and the answered rows are kept until they are "
            f"committed (on a full disk, waiting up to {self.config.disk_wait:.0f} s for room)"
        )

    async def _summarise(self) -> RunSummary:
        stop = self.stop
        ended = ApiError | BudgetExhausted | ClusterLost  # errors a summary reports
        if stop.error is not None and not isinstance(stop.error, ended):
            raise stop.error
        totals = self.checkpoint.totals
        status, message = run_outcome(stop.status, stop.message, self.stats, totals)
        failures = await anyio.to_thread.run_sync(failure_classes, self.config.out_dir)
        summary = build_summary(
            status=status,
            message=message,
            stats=self.stats,
            totals=totals,
            settled=self.limits.settled(),
            limit_found=self.limits.found_limit,
            out_dir=self.config.out_dir,
            failures=failures,
        )
        summary.error = stop.error
        with output_errors("write"):
            await anyio.to_thread.run_sync(summary.write, self.config.out_dir)
        return summary

    def _invalid_log(self) -> contextlib.AbstractContextManager[OnProblem | None]:
        if not self.config.skip_invalid:
            return contextlib.nullcontext()
        return invalid_log(self.config.out_dir, self._count_invalid)

    def _count_invalid(self, problem: Problem) -> None:
        # A record's problems come one after another; the count is of records (lines).
        if problem.location != self._last_invalid:
            self.stats.invalid += 1
            self._last_invalid = problem.location

    async def _produce(
        self,
        on_problem: OnProblem | None,
        answered: MemoryObjectSendStream[Outcomes],
        send: MemoryObjectSendStream[Batch],
    ) -> None:
        """Read the jobs, hand reused answers straight to the writer (`answered`) and the
        batches to send to the workers (`send`)."""
        with self.stop.producer_scope:
            jobs = read_jobs(
                self.config.jobs_path,
                self.kind,
                skip_invalid=self.config.skip_invalid,
                on_problem=on_problem,
                exclude=self.duplicates,
                keep=self.kept,
            )
            packer = self.kind.packer()
            finished = False
            while not finished:
                try:
                    chunk = await anyio.to_thread.run_sync(self._next_chunk, jobs, packer)
                except GigabatchError as exc:  # the input changed under the run
                    self.stop.stop("fatal", str(exc), exc)
                    return
                finished = chunk.finished
                for reused in chunk.reused:
                    if reused.results:
                        await answered.send(reused)
                for batch in chunk.batches:
                    await send.send(batch)
            changes = self.reuse.changes
            if changes is not None:
                await anyio.to_thread.run_sync(changes.write_removed, self.config.out_dir)

    def _next_chunk(self, jobs: Iterator[Job], packer: Packer) -> _Chunk:
        """Read up to a chunk of jobs (in a thread): skip done and filtered-out ones, take
        the already answered ones from the cache or journal, pack the rest."""
        done = self.checkpoint.done
        check_done = len(done) > 0
        keep = self.config.job_filter
        changes = self.reuse.changes
        chunk = _Chunk()
        todo: list[Job] = []
        for _ in range(_READ_CHUNK):
            job = next(jobs, None)
            if job is None:
                chunk.finished = True
                break
            if changes is not None:
                changes.seen(job.id)
            if (check_done and job.id in done) or (keep is not None and not keep(job)):
                self.stats.skipped += 1
                continue
            todo.append(job)
        answers = self.reuse.answers
        if answers.active and todo:
            found = answers.lookup(todo)
            todo = found.to_send
            self._count_reused(chunk, found.cached, cached=True)
            self._count_reused(chunk, found.journalled, cached=False)
        for job in todo:
            chunk.batches.extend(packer.add(job))
        if chunk.finished:
            chunk.batches.extend(packer.flush())
        return chunk

    def _count_reused(self, chunk: _Chunk, results: list[JobResult], *, cached: bool) -> None:
        if not results:
            return
        out = reused_batch(results, cached=cached)
        self.stats.succeeded += len(results)
        if cached:
            self.stats.from_cache += len(results)
        else:
            self.stats.from_journal += len(results)
        self._drop_unchanged(out)
        chunk.reused.append(out)

    def _drop_unchanged(self, out: Outcomes) -> None:
        """--changed-since: leave out the rows answered as in the earlier output."""
        changes = self.reuse.changes
        if changes is not None and out.results:
            unchanged = changes.drop_unchanged(out)
            self.stats.unchanged += unchanged
            self.stats.succeeded -= unchanged

    async def _work(
        self, client: GigaChatClient, send: MemoryObjectSendStream[Outcomes], batch: Batch
    ) -> bool:
        """One batch of a worker: False once the run is stopping (the batch stays pending)."""
        if self.stop.stopping:
            return False
        outcomes = await self.dispatch.send(client, batch)
        if outcomes is not None:
            self._drop_unchanged(outcomes)
            # Answered (and billed): hand it to the writer even if the grace period ends
            # now; the writer keeps reading until every worker is gone.
            with anyio.CancelScope(shield=True):
                await send.send(outcomes)
        return True
