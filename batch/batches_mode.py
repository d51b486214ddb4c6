"""`run --mode batches`: the same job file through GigaChat's native batch API.

    validate -> open the checkpoint and the journal (DIR/batches.sqlite)
    re-attach to the batches the journal records (their jobs are never submitted again)
    loop: upload files of new tasks while fewer than `max_active` batches wait
          poll each waiting batch (backoff with jitter, 429 / Retry-After honoured)
          completed -> stream its output file -> parts (results/, failed/) -> `collected`
    until nothing waits, the completion timeout passes (exit 1, resumable), or a signal.

Rows have the online columns (usage per row, the model version); `latency_ms` is null, as
no request of the run waited for an answer.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import anyio

from batch import batches_wire
from batch.api_types import BatchInfo
from batch.batch_files import BatchFile, FileSource, repack
from batch.batch_journal import (
    ACTIVE,
    SUBMITTING,
    BatchJournal,
    RecordedBatch,
    orphan_match,
)
from batch.batch_results import TaskRows
from batch.batches_settings import BatchesSettings, PollPacing
from batch.checkpoint import FAILED_SCHEMA, Checkpoint
from batch.errors import (
    ApiError,
    ConfigError,
    FatalError,
    NotFound,
    PermanentError,
    RateLimited,
    RetryableError,
)
from batch.failures import failure_classes
from batch.pricing import PriceTable
from batch.progress import Progress
from batch.retry import call_with_retry
from batch.runner import RunConfig, keep_spec
from batch.summary import RunStats, RunSummary, build_summary, run_outcome
from batch.writer import PartWriter
from jobs.base import Batch, Job
from jobs.readers import ValidationReport, read_jobs, validate_jobs

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class _Waiting:
    """A batch on the server whose results are not committed yet."""

    record: RecordedBatch
    tasks: dict[str, Batch]
    info: BatchInfo | None = None

    @property
    def id(self) -> str:
        assert self.record.id is not None
        return self.record.id


def _open_client(config: RunConfig) -> AbstractAsyncContextManager[Any]:
    if config.client_factory is not None:
        return config.client_factory()
    from batch.client import GigaChatClient
    from batch.settings import ClientSettings

    settings = config.client_settings or ClientSettings.from_env()
    return GigaChatClient(settings, max_connections=4)


async def run_batches(config: RunConfig, settings: BatchesSettings) -> RunSummary:
    """Run `config` through the batch API to its end, a timeout or a signal; the summary is
    also written to summary.json. Budgets (--max-cost, --max-tokens) are online-only for now."""
    if config.max_cost is not None or config.max_tokens is not None:
        raise ConfigError("--max-cost / --max-tokens work with --mode online only")
    kind = config.kind
    prices = (config.prices if config.prices is not None else PriceTable.load()).for_batches()
    keep = keep_spec(kind, config.keep_columns)
    report = await anyio.to_thread.run_sync(
        partial(validate_jobs, config.jobs_path, kind, keep=keep)
    )
    if not config.skip_invalid:
        report.raise_for_problems()
    if config.restart:
        BatchJournal.remove(config.out_dir)
    checkpoint = await anyio.to_thread.run_sync(
        partial(
            Checkpoint.open,
            config.out_dir,
            kind=kind.name,
            input_path=str(config.jobs_path),
            input_fingerprint=report.fingerprint,
            settings={**kind.answer_settings(), **keep.settings()},
            total_jobs=report.jobs,
            restart=config.restart,
            retry_failed=config.retry_failed,
        )
    )
    stats = RunStats(
        kind=kind.name, prices=prices, total_jobs=report.jobs, done_before=len(checkpoint.done)
    )
    journal = BatchJournal.open(config.out_dir)
    try:
        run = _BatchesRun(config, settings, checkpoint, journal, stats, report)
        return await run.execute()
    finally:
        journal.close()


class _BatchesRun:
    def __init__(
        self,
        config: RunConfig,
        settings: BatchesSettings,
        checkpoint: Checkpoint,
        journal: BatchJournal,
        stats: RunStats,
        report: ValidationReport,
    ) -> None:
        self.config = config
        self.settings = settings
        self.kind = config.kind
        self.checkpoint = checkpoint
        self.journal = journal
        self.stats = stats
        self.duplicates = report.duplicates
        self.kept = report.kept
        schema = self.kind.result_schema()
        self.result_schema = self.kept.extend(schema) if self.kept else schema
        self.failed_schema = self.kept.extend(FAILED_SCHEMA) if self.kept else FAILED_SCHEMA
        self.waiting: dict[int, _Waiting] = {}
        self.pacing = PollPacing(settings.poll_initial_s, settings.poll_max_s)
        self.writer = PartWriter(
            checkpoint,
            self.result_schema,
            flush_rows=config.flush_rows,
            failed_schema=self.failed_schema,
        )
        self.rows = TaskRows(self.kind, self.writer, checkpoint.done, stats, config.flush_rows)
        self.status, self.message = "completed", ""
        self.created = self.collected = self.adopted = 0

    def _jobs(self) -> Any:
        return read_jobs(
            self.config.jobs_path,
            self.kind,
            skip_invalid=self.config.skip_invalid,
            exclude=self.duplicates,
            keep=self.kept,
        )

    async def execute(self) -> RunSummary:
        config = self.config
        progress = Progress(self.stats, config.progress, interval=config.progress_interval)
        async with _open_client(config) as client, anyio.create_task_group() as tg:
            if config.handle_signals:
                tg.start_soon(self._watch_signals, tg.cancel_scope)
            tg.start_soon(progress.run)
            try:
                await self._drive(client)
            except FatalError as exc:
                self.status, self.message = "fatal", str(exc)
            finally:
                with anyio.CancelScope(shield=True):
                    await self.writer.flush()
                    await anyio.to_thread.run_sync(
                        self.checkpoint.ensure_datasets, self.result_schema, self.failed_schema
                    )
            tg.cancel_scope.cancel()
        progress.close()
        return await self._summary()

    async def _watch_signals(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                name = "interrupted" if signum == signal.SIGINT else "terminated"
                self.status = name
                self.message = f"{name}; the batches are recorded: run again to collect them"
                scope.cancel()
                return

    async def _drive(self, client: Any) -> None:
        await self._reattach(client)
        waiting = {
            job.id for w in self.waiting.values() for b in w.tasks.values() for job in b.jobs
        }
        done = self.checkpoint.done
        source = FileSource(
            self._jobs(),
            self.kind,
            lambda job: job.id in done or job.id in waiting,
            max_lines=self.settings.max_lines,
            max_bytes=self.settings.max_bytes,
        )
        deadline = time.monotonic() + self.settings.completion_timeout_s
        exhausted = False
        while True:
            while not exhausted and len(self.waiting) < self.settings.max_active:
                file = await anyio.to_thread.run_sync(source.next_file)
                if file is None:
                    exhausted = True
                else:
                    await self._submit(client, file)
            self.stats.skipped = source.skipped
            if not self.waiting:
                return
            await self._poll_round(client)
            if not self.waiting and exhausted:
                return
            if time.monotonic() >= deadline:
                self._timed_out()
                return
            await anyio.sleep(self.pacing.next_round())

    def _timed_out(self) -> None:
        jobs = sum(w.record.jobs for w in self.waiting.values())
        self.status = "timeout"
        self.message = (
            f"{len(self.waiting)} batch(es) ({jobs} jobs) not completed within "
            f"{self.settings.completion_timeout_s:g} s; run the same command again to keep "
            "waiting (nothing is submitted twice)"
        )

    async def _api(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """One API call with the run's retries; a 429 waits for Retry-After (or a backoff)."""

        async def patient() -> T:
            self.stats.requests += 1
            try:
                return await attempt()
            except RateLimited as exc:
                self.stats.rate_limited += 1
                await anyio.sleep(self.pacing.after_429(exc.retry_after))
                raise

        return await call_with_retry(patient, self.config.retry)

    # --- re-attaching and submitting -------------------------------------------------

    async def _reattach(self, client: Any) -> None:
        """Rebuild every recorded batch's tasks from the job file, after looking for the
        batches of `submitting` records (killed between upload and answer) on the server."""
        recorded = self.journal.batches((SUBMITTING, ACTIVE))
        if any(r.state == SUBMITTING for r in recorded):
            await self._adopt_orphans(client, recorded)
            recorded = self.journal.batches((ACTIVE,))
        active = [r for r in recorded if r.state == ACTIVE]
        if not active:
            return
        tasks = {r.seq: self.journal.tasks(r.seq) for r in active}
        wanted = {j for t in tasks.values() for ids in t.values() for j in ids}
        jobs = await anyio.to_thread.run_sync(self._read_jobs, wanted)
        for record in active:
            rebuilt = {
                task_id: repack(self.kind, [jobs[j] for j in ids])
                for task_id, ids in tasks[record.seq].items()
            }
            self.waiting[record.seq] = _Waiting(record, rebuilt)

    async def _adopt_orphans(self, client: Any, recorded: list[RecordedBatch]) -> None:
        """Record the batch each `submitting` record created, found in the list of all
        batches; a record without one is forgotten and its jobs are submitted again."""
        try:
            listed = await self._api(client.batch_status)
        except (RetryableError, PermanentError) as exc:
            logger.warning("cannot list the server's batches: %s", exc)
            listed = []
        known = {r.id for r in self.journal.batches() if r.id}
        for record in (r for r in recorded if r.state == SUBMITTING):
            match = orphan_match(record, listed, known)
            if match is None:
                logger.warning(
                    "a file of %d jobs was being uploaded when the last run stopped and no "
                    "batch on the server matches it: submitting those jobs again", record.jobs
                )
                self.journal.forget(record.seq)
                continue
            self.journal.created(record.seq, match)
            known.add(match.id)
            self.adopted += 1

    def _read_jobs(self, wanted: set[str]) -> dict[str, Job]:
        found = {job.id: job for job in self._jobs() if job.id in wanted}
        missing = wanted - found.keys()
        if missing:
            raise ConfigError(
                f"{len(missing)} jobs of recorded batches are not in the input any more"
            )
        return found

    async def _submit(self, client: Any, file: BatchFile) -> None:
        """Record the file, upload it, record the batch id: shielded, so a signal never
        lands between the server creating a batch and its id reaching the journal."""
        lines = bytes(file.lines)
        with anyio.CancelScope(shield=True):
            seq = self.journal.begin(file.method, file.job_ids())
            try:
                info = await self._api(partial(client.create_batch, file.method, lines))
            except (PermanentError, RetryableError) as exc:
                self.journal.forget(seq)
                await self.rows.fail_with(list(file.tasks.values()), exc)
                return
            except BaseException:
                self.journal.forget(seq)
                raise
            self.journal.created(seq, info)
        self.created += 1
        [record] = [r for r in self.journal.batches((ACTIVE,)) if r.seq == seq]
        self.waiting[seq] = _Waiting(record, dict(file.tasks), info)

    # --- polling and collecting ------------------------------------------------------

    async def _poll_round(self, client: Any) -> None:
        for seq, waiting in list(self.waiting.items()):
            try:
                [info] = await self._api(partial(client.batch_status, waiting.id))
            except NotFound as exc:  # gone from the server (retention is undocumented)
                await self.rows.fail_with(list(waiting.tasks.values()), exc)
                await self._close(seq)
                continue
            except (RetryableError, PermanentError, ValueError) as exc:
                logger.warning("polling batch %s failed, trying later: %s", waiting.id, exc)
                continue
            waiting.info = info
            self.journal.polled(seq, info)
            if info.status == "completed" and info.output_file_id:
                await self._collect(client, seq, waiting, info.output_file_id)
            elif time.time() - waiting.record.recorded_at > self.settings.completion_window_s:
                await self._expire(seq, waiting)

    async def _collect(self, client: Any, seq: int, waiting: _Waiting, file_id: str) -> None:
        """Stream the output file into parts; tasks left without a line fail."""
        self.stats.requests += 1
        try:
            async for line in client.download_batch_results(file_id):
                await self.rows.task_done(waiting.tasks, batches_wire.parse_task_result(line))
        except ApiError as exc:
            logger.warning("downloading batch %s failed, trying later: %s", waiting.id, exc)
            await self.writer.flush()
            return
        if waiting.tasks:
            message = f"the output file of batch {waiting.id} has no line for this task"
            await self.rows.fail(list(waiting.tasks.values()), "BatchTaskMissing", message)
        await self._close(seq)
        self.collected += 1

    async def _expire(self, seq: int, waiting: _Waiting) -> None:
        window = self.settings.completion_window_s
        message = f"batch {waiting.id} not completed within the {window:g} s completion window"
        await self.rows.fail(list(waiting.tasks.values()), "BatchExpired", message)
        await self._close(seq)

    async def _close(self, seq: int) -> None:
        """Batch `seq` is done with: commit its rows, then say so in the journal."""
        self.waiting.pop(seq, None)
        await self.writer.flush()
        self.journal.collected(seq)

    async def _summary(self) -> RunSummary:
        self.status, self.message = run_outcome(
            self.status, self.message, self.stats, self.checkpoint.totals
        )
        failures = await anyio.to_thread.run_sync(failure_classes, self.config.out_dir)
        summary = build_summary(
            status=self.status,
            message=self.message,
            stats=self.stats,
            totals=self.checkpoint.totals,
            settled=0,
            limit_found=False,
            out_dir=self.config.out_dir,
            failures=failures,
        )
        summary.data["batches"] = {
            "created": self.created,
            "collected": self.collected,
            "adopted": self.adopted,
            "waiting": len(self.waiting),
        }
        await anyio.to_thread.run_sync(summary.write, self.config.out_dir)
        return summary
