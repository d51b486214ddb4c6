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
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from batch.budget import Budget
from batch.checkpoint import Checkpoint
from batch.errors import ApiError, BudgetExhausted, GigabatchError
from batch.eventlog import EventLog
from batch.invalid_log import OnProblem, invalid_log
from batch.limiter import AdaptiveLimiter
from batch.outcomes import reused_batch, with_cached_column
from batch.pipeline import run_pipeline
from batch.pricing import PriceTable
from batch.progress import Progress, ProgressMode
from batch.recording import AttemptRecorder
from batch.retry import RetryPolicy
from batch.reuse import RunReuse
from batch.sending import BatchSender, BudgetGate
from batch.stopping import RunStop
from batch.summary import RunStats, RunSummary, build_summary
from batch.writer import Outcomes, PartWriter
from jobs.base import Batch, Job, JobKind, JobResult, Packer, Problem
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
    # The answer cache: None uses it when the kind's answers are cached by default
    # (embeddings); `cache_dir` None is GIGABATCH_CACHE_DIR, else the user cache directory.
    cache: bool | None = None
    cache_dir: Path | None = None
    # Write only the rows whose id is new or whose answer changed since this earlier output,
    # and the ids that disappeared (OUT/removed/).
    changed_since: Path | None = None


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
            settings=settings,
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
    run = _Run(config, checkpoint, stats, budget, report.duplicates, events, reuse)
    finished = False
    try:
        summary = await run.execute()
        finished = summary.status in ("completed", "failed_rows")
        return summary
    finally:
        run.recorder.close()
        await anyio.to_thread.run_sync(partial(run.close_reuse, finished=finished))


@dataclass
class _Chunk:
    """What the producer made of one chunk of jobs."""

    batches: list[Batch] = field(default_factory=list)
    reused: list[Outcomes] = field(default_factory=list)
    finished: bool = False


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
        reuse: RunReuse,
    ) -> None:
        self.config = config
        self.kind = config.kind
        self.checkpoint = checkpoint
        self.stats = stats
        self.duplicates = duplicates
        self.reuse = reuse
        self.recalled = reuse.limit.recall() if reuse.limit is not None else None
        self.limiter = AdaptiveLimiter(
            config.max_concurrency, initial=config.initial_concurrency, remembered=self.recalled
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

    def close_reuse(self, *, finished: bool) -> None:
        """Commit the answers handed to the cache or journal, and remember the limit."""
        reuse = self.reuse
        reuse.answers.close(finished=finished)
        if reuse.limit is not None and self.stats.requests:
            reuse.limit.keep(self.limiter, recalled=self.recalled)

    def _client(self) -> AbstractAsyncContextManager[GigaChatClient]:
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
            with_cached_column(self.kind.result_schema()),
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
                        side.start_soon(self.stop.watch_signals)
                    side.start_soon(progress.run)
                    side.start_soon(self.stop.grace)
                    async with send_out:
                        with self.stop.workers_scope:
                            await run_pipeline(
                                partial(self._produce, on_problem, send_out),
                                partial(self._work, client, send_out),
                                workers=config.max_concurrency,
                            )
                    side.cancel_scope.cancel()
        progress.close()
        return await self._summarise()

    async def _summarise(self) -> RunSummary:
        stop = self.stop
        if stop.error is not None and not isinstance(stop.error, ApiError | BudgetExhausted):
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
            settled=self.limiter.settled(),
            limit_found=self.limiter.found_limit,
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
        outcomes = await self.sender.send(client, batch)
        if outcomes is not None:
            self._drop_unchanged(outcomes)
            # Answered (and billed): hand it to the writer even if the grace period ends
            # now; the writer keeps reading until every worker is gone.
            with anyio.CancelScope(shield=True):
                await send.send(outcomes)
        return True
