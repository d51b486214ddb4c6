"""The engine: one run of a job file through a bounded, self-tuning pool into Parquet parts.

    validate (whole file, nothing sent) -> open the checkpoint (what is done already)
    producer (thread: read, skip done, filter, pack) -> bounded stream -> N workers
    worker: budget.reserve -> limiter slot + run-wide cooldown -> kind.send, with retry
         -> outcomes -> bounded stream -> the single PartWriter -> committed parts

The parts, each readable alone: `pipeline` (producer -> stream -> workers), `sending` (a
worker's send loop: budget, limiter slot, retries), `outcomes` (result and failed rows),
`stopping` (signals and the grace period), `invalid_log` (OUT/invalid.jsonl); what a run is
asked to do is `run_config`, and what happens before anything is sent is `preparing`.

The engine knows jobs only through `JobKind`. A run ends by running out of jobs, by a fatal
API error, by the budget, or by a signal; every way commits what was answered.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Protocol

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from batch.checkpoint import FAILED_SCHEMA
from batch.errors import (
    ApiError,
    BudgetExhausted,
    ClusterLost,
    GigabatchError,
    OutputError,
)
from batch.failures import failure_classes
from batch.invalid_log import OnProblem, invalid_log
from batch.limiter import AdaptiveLimiter, Cooldown
from batch.outage import Outage
from batch.outcomes import cached_batch, reused_batch, with_cached_column
from batch.pipeline import run_pipeline, send_soon
from batch.preflight import check_service
from batch.preparing import Prepared, prepare_watching_signals, refuse_on_cluster
from batch.progress import Progress
from batch.recording import AttemptRecorder
from batch.run_config import RunConfig, open_client
from batch.sending import BatchSender, BudgetGate
from batch.stalls import HEADROOM
from batch.stopping import RunStop, interruptible
from batch.storage import output_errors
from batch.summary import RunSummary, build_summary, run_outcome
from batch.writer import Outcomes, PartWriter
from jobs.base import Batch, Job, Packer, Problem, SourceLocation
from jobs.readers import read_jobs

if TYPE_CHECKING:
    from batch.client import GigaChatClient
    from batch.cluster.dispatch import ClusterSender

# Jobs the producer thread reads per hop to the thread (amortises the hop's cost).
_READ_CHUNK = 512


async def run_jobs(config: RunConfig) -> RunSummary:
    """Run `config` to its end and return its summary (also written to summary.json).

    The output directory is locked for the whole run (OutputLocked when another run holds
    it). Raises JobFileError, RunRefused, ConfigError, OutputError or Interrupted before
    anything is sent, and OutputError when answers could not be committed."""
    if config.max_concurrency < 1:
        raise ValueError("max_concurrency must be at least 1")
    budgeted = config.max_cost is not None or config.max_tokens is not None
    if config.ray is not None:
        refuse_on_cluster(config)
    if budgeted:
        # A reservation only bounds what a request can cost when the request itself is
        # bounded (chat: max_tokens on every request); the cap is then in the fingerprint.
        config = dataclasses.replace(config, kind=config.kind.bounded())
    prepared = await prepare_watching_signals(config)  # it holds the output's lock
    try:
        run = _Run(prepared)
        finished = False
        try:
            summary = await run.execute()
            finished = summary.status in ("completed", "failed_rows")
            return summary
        finally:
            run.recorder.close()
            await anyio.to_thread.run_sync(partial(run.close_reuse, finished=finished))
    finally:
        if prepared.lock is not None:
            prepared.lock.release()


@dataclass
class _Chunk:
    """What the producer made of one chunk of jobs."""

    batches: list[Batch] = field(default_factory=list)
    reused: list[Outcomes] = field(default_factory=list)
    finished: bool = False


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

    def __init__(self, prepared: Prepared) -> None:
        config = self.config = prepared.config
        self.start = prepared.start
        self.kind = config.kind
        self.checkpoint = prepared.checkpoint
        stats = self.stats = prepared.stats
        report, budget = prepared.report, prepared.budget
        self.duplicates = report.duplicates
        self.kept = report.kept
        schema = self.kind.result_schema()
        self.result_schema = with_cached_column(self.kept.extend(schema) if self.kept else schema)
        self._last_invalid: SourceLocation | None = None
        reuse = self.reuse = prepared.reuse
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
        self.recorder = AttemptRecorder(prepared.events, self.limiter, stats.prices)
        self.budget = BudgetGate(budget, self.stop) if budget is not None else None
        self.sender = BatchSender(
            kind=self.kind,
            limiter=self.limiter,
            retry=config.retry,
            stats=stats,
            stop=self.stop,
            budget=self.budget,
            recorder=self.recorder,
            on_answers=reuse.answers.keep,
        )
        # Where batches go (this process's sender, or a cluster's workers) and who knows
        # the limit the run settled at.
        self.dispatch: Dispatch = self.sender
        self.limits: LimitReport = self.limiter
        self.cluster: ClusterSender | None = None

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
        per_slot = 1 if self.budget is not None else HEADROOM
        return self.config.max_concurrency * per_slot

    def _pause(self) -> str:
        """The run-wide pause in force, for the progress line ("" when none)."""
        outage = self.limiter.outage
        away = self.cluster.outage_elapsed if self.cluster is not None else outage.elapsed
        if away > 0:
            return f"PAUSED: API unreachable for {away:.0f}s, probing"
        remaining = self.limiter.cooldown.remaining
        return f"PAUSED {remaining:.1f}s after 429s" if remaining >= 0.5 else ""

    @contextlib.asynccontextmanager
    async def _dispatcher(self, client: GigaChatClient) -> AsyncIterator[None]:
        """On a cluster: batches go to its workers while the block runs."""
        config = self.config
        if config.ray is None:
            yield
            return
        from batch.cluster.dispatch import DriverDuties
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
            max_outage=config.max_outage,
            answers_keyed_by=self.reuse.answers.keyed_by,
        )
        duties = DriverDuties(
            budget=self.budget,
            keep_answers=self.reuse.answers.put,
            events=self.recorder.log,
            announce=self.progress.announce,
        )
        async with open_cluster(plan, client, self.stats, self.stop, duties) as cluster:
            self.dispatch = self.limits = self.stop.limiter = self.cluster = cluster
            yield

    async def execute(self) -> RunSummary:
        config = self.config
        progress = self.progress
        progress.start_line(self.start)
        kept = self.kept
        writer = PartWriter(
            self.checkpoint,
            self.result_schema,
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
                    check = partial(check_service, client, self.kind.answer_settings().get("model"))
                    if config.handle_signals:
                        await interruptible(check, "during the start-up check; no job was sent")
                    else:
                        await check()
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
        failures = await anyio.to_thread.run_sync(failure_classes, self.checkpoint.store)
        summary = build_summary(
            status=status,
            message=message,
            stats=self.stats,
            totals=totals,
            settled=self.limits.settled(),
            limit_found=self.limits.found_limit,
            out_dir=self.config.shown_out,
            failures=failures,
        )
        summary.error = stop.error
        with output_errors("write"):
            await anyio.to_thread.run_sync(
                summary.write, self.config.out_dir, self.checkpoint.store
            )
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
                    if reused.result_count:
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
            if found.hits:
                hits = cached_batch(self.kind, found.hits, self.result_schema)
                self._count_reused(chunk, hits, cached=True)
            if found.journalled:
                journalled = reused_batch(found.journalled, cached=False)
                self._count_reused(chunk, journalled, cached=False)
        for job in todo:
            chunk.batches.extend(packer.add(job))
        if chunk.finished:
            chunk.batches.extend(packer.flush())
        return chunk

    def _count_reused(self, chunk: _Chunk, out: Outcomes, *, cached: bool) -> None:
        """Count answers not sent (`cached`: cache hits, else journalled) and queue them."""
        count = out.result_count
        self.stats.succeeded += count
        if cached:
            self.stats.from_cache += count
        else:
            self.stats.from_journal += count
        self._drop_unchanged(out)
        chunk.reused.append(out)

    def _drop_unchanged(self, out: Outcomes) -> None:
        """--changed-since: leave out the rows answered as in the earlier output."""
        changes = self.reuse.changes
        if changes is not None and out.result_count:
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
            await send_soon(send, outcomes, shield=True)
        return True
