"""`run --mode batches`: the same job file through GigaChat's native batch API.

    validate -> open the checkpoint and the journal (DIR/batches.sqlite)
    re-attach to the batches the journal records (their jobs are never submitted again)
    loop: upload files of new tasks while fewer than `max_active` batches wait (with a
          budget: while the file's ceilings fit, `batch.batches_budget`)
          poll the waiting batches (`batch.batches_polling`: one list request per round)
          completed -> stream its output file -> parts (results/, failed/) -> `collected`
    until nothing waits, the completion timeout passes (exit 1, resumable), the budget is
    reached (exit 4, after collecting what waits), or a signal.

Rows have the online columns (usage per row, the model version); `latency_ms` is the time
from the file's submission to its collection. Journal commits (fsync) run in a thread.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio

from batch import batches_wire
from batch.api_types import BatchInfo
from batch.batch_files import BatchFile, FileSource
from batch.batch_journal import BatchJournal, RecordedBatch, in_thread
from batch.batch_results import TaskRows
from batch.batches_budget import FileFit, TaskBudget
from batch.batches_polling import PatientApi, poll_statuses
from batch.batches_resume import reattach
from batch.batches_settings import BatchesSettings, PollPacing
from batch.budget import Budget
from batch.checkpoint import FAILED_SCHEMA, Checkpoint
from batch.errors import (
    ApiError,
    FatalError,
    NotFound,
    PermanentError,
    RetryableError,
)
from batch.failures import failure_classes
from batch.outcomes import with_cached_column
from batch.part_store import part_store
from batch.preparing import keep_spec
from batch.pricing import PriceTable
from batch.progress import Progress
from batch.run_config import RunConfig, open_client
from batch.summary import RunStats, RunSummary, build_summary, run_outcome
from batch.writer import PartWriter
from jobs.base import Batch
from jobs.readers import ValidationReport, read_jobs, validate_jobs

logger = logging.getLogger(__name__)


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


# Connections a batch run needs: one call at a time, and the token refresh beside it.
_CONNECTIONS = 4


async def run_batches(config: RunConfig, settings: BatchesSettings) -> RunSummary:
    """Run `config` through the batch API to its end, a timeout, the budget or a signal; the
    summary is also written to summary.json. With `max_cost`/`max_tokens` the kind is
    `kind.bounded()` (chat requests carry max_tokens), as online."""
    budgeted = config.max_cost is not None or config.max_tokens is not None
    if budgeted:
        config = dataclasses.replace(config, kind=config.kind.bounded())
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
            setting_hints=kind.setting_hints(),
            store=part_store(config.out_dir, config.output),
        )
    )
    stats = RunStats(
        kind=kind.name, prices=prices, total_jobs=report.jobs, done_before=len(checkpoint.done)
    )
    budget = None
    if budgeted:
        limits = Budget.over_output(
            max_cost=config.max_cost,
            max_tokens=config.max_tokens,
            prices=prices,
            totals=checkpoint.totals,
        )
        budget = TaskBudget(limits, kind)
    journal = await anyio.to_thread.run_sync(BatchJournal.open, config.out_dir)
    try:
        run = _BatchesRun(config, settings, checkpoint, journal, stats, budget, report)
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
        budget: TaskBudget | None,
        report: ValidationReport,
    ) -> None:
        self.config = config
        self.settings = settings
        self.kind = config.kind
        self.checkpoint = checkpoint
        self.journal = journal
        self.stats = stats
        self.budget = budget
        self.duplicates = report.duplicates
        self.kept = report.kept
        schema = self.kind.result_schema()
        self.result_schema = with_cached_column(self.kept.extend(schema) if self.kept else schema)
        self.failed_schema = self.kept.extend(FAILED_SCHEMA) if self.kept else FAILED_SCHEMA
        self.waiting: dict[int, _Waiting] = {}
        self.pacing = PollPacing(settings.poll_initial_s, settings.poll_max_s)
        self.api = PatientApi(config.retry, self.pacing, stats)
        self.writer = PartWriter(
            checkpoint,
            self.result_schema,
            flush_rows=config.flush_rows,
            failed_schema=self.failed_schema,
        )
        self.rows = TaskRows(
            self.kind, self.writer, checkpoint.done, stats, config.flush_rows, budget
        )
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
        client_context = open_client(config, _CONNECTIONS)
        async with client_context as client, anyio.create_task_group() as tg:
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
        held: BatchFile | None = None  # read, but waiting for the budget to have room
        exhausted = False
        while True:
            while not exhausted and len(self.waiting) < self.settings.max_active:
                file = held or await anyio.to_thread.run_sync(source.next_file)
                held = None
                fit = FileFit.NEVER if file is None else self._fits(file)
                if fit is FileFit.WAIT:
                    held = file
                    break
                if file is None or fit is FileFit.NEVER:
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

    def _fits(self, file: BatchFile) -> FileFit:
        """Reserve the file's ceilings (with a budget); a file that can never fit stops
        the submissions, and the run ends with status `budget` once what waits is in."""
        if self.budget is None:
            return FileFit.RESERVED
        fit = self.budget.reserve_file(file.tasks)
        if fit is FileFit.WAIT and not self.waiting:  # nothing left that could settle
            fit = FileFit.NEVER
        if fit is FileFit.NEVER:
            self.status = "budget"
            self.message = (
                f"budget reached; {self.budget.describe()}; the next file of "
                f"{sum(len(b.jobs) for b in file.tasks.values())} jobs could cross it"
            )
        return fit

    def _timed_out(self) -> None:
        jobs = sum(w.record.jobs for w in self.waiting.values())
        self.status = "timeout"
        self.message = (
            f"{len(self.waiting)} batch(es) ({jobs} jobs) not completed within "
            f"{self.settings.completion_timeout_s:g} s; run the same command again to keep "
            "waiting (nothing is submitted twice)"
        )

    # --- re-attaching and submitting -------------------------------------------------

    async def _reattach(self, client: Any) -> None:
        found = await reattach(self.journal, self.api, client, self.kind, self._jobs)
        self.adopted = found.adopted
        for record, tasks in found.active:
            if self.budget is not None:
                self.budget.hold(tasks)
            self.waiting[record.seq] = _Waiting(record, tasks)

    async def _submit(self, client: Any, file: BatchFile) -> None:
        """Record the file, upload it, record the batch id: shielded, so a signal never
        lands between the server creating a batch and its id reaching the journal."""
        lines = bytes(file.lines)
        journal = self.journal
        with anyio.CancelScope(shield=True):
            seq = await in_thread(journal.begin, file.method, file.job_ids())
            try:
                info = await self.api(partial(client.create_batch, file.method, lines))
            except (PermanentError, RetryableError) as exc:
                await in_thread(journal.forget, seq)
                await self.rows.failed(file.tasks, exc)
                return
            except BaseException:
                await in_thread(journal.forget, seq)
                raise
            record = await in_thread(journal.created, seq, info)
        self.created += 1
        self.waiting[seq] = _Waiting(record, dict(file.tasks), info)

    # --- polling and collecting ------------------------------------------------------

    async def _poll_round(self, client: Any) -> None:
        by_id = {w.id: seq for seq, w in self.waiting.items()}
        polled = await poll_statuses(self.api, client, list(by_id))
        for batch_id, seq in by_id.items():
            waiting, answer = self.waiting[seq], polled[batch_id]
            if isinstance(answer, NotFound):  # gone from the server (retention unknown)
                await self.rows.lost(waiting.tasks, "NotFound", answer.message, 404)
                await self._close(seq)
                continue
            if not isinstance(answer, BatchInfo):
                logger.warning("polling batch %s failed, trying later: %s", batch_id, answer)
                continue
            if waiting.info is None or _progress(waiting.info) != _progress(answer):
                await in_thread(self.journal.polled, seq, answer)
            waiting.info = answer
            if answer.status == "completed" and answer.output_file_id:
                await self._collect(client, seq, waiting, answer.output_file_id)
            elif time.time() - waiting.record.recorded_at > self.settings.completion_window_s:
                await self._expire(seq, waiting)

    async def _collect(self, client: Any, seq: int, waiting: _Waiting, file_id: str) -> None:
        """Stream the output file into parts; tasks left without a line fail."""
        self.stats.requests += 1
        latency = time.time() - waiting.record.recorded_at
        try:
            async for line in client.download_batch_results(file_id):
                result = batches_wire.parse_task_result(line)
                await self.rows.task_done(waiting.tasks, result, latency)
        except ApiError as exc:
            logger.warning("downloading batch %s failed, trying later: %s", waiting.id, exc)
            await self.writer.flush()
            return
        if waiting.tasks:
            message = f"the output file of batch {waiting.id} has no line for this task"
            await self.rows.lost(waiting.tasks, "BatchTaskMissing", message, None)
        await self._close(seq)
        self.collected += 1

    async def _expire(self, seq: int, waiting: _Waiting) -> None:
        window = self.settings.completion_window_s
        message = f"batch {waiting.id} not completed within the {window:g} s completion window"
        await self.rows.lost(waiting.tasks, "BatchExpired", message, None)
        await self._close(seq)

    async def _close(self, seq: int) -> None:
        """Batch `seq` is done with: commit its rows, then say so in the journal."""
        self.waiting.pop(seq, None)
        await self.writer.flush()
        await in_thread(self.journal.collected, seq)

    async def _summary(self) -> RunSummary:
        self.status, self.message = run_outcome(
            self.status, self.message, self.stats, self.checkpoint.totals
        )
        failures = await anyio.to_thread.run_sync(failure_classes, self.checkpoint.store)
        summary = build_summary(
            status=self.status,
            message=self.message,
            stats=self.stats,
            totals=self.checkpoint.totals,
            settled=0,
            limit_found=False,
            out_dir=self.config.shown_out,
            failures=failures,
        )
        summary.data["batches"] = {
            "created": self.created,
            "collected": self.collected,
            "adopted": self.adopted,
            "waiting": len(self.waiting),
        }
        await anyio.to_thread.run_sync(summary.write, self.config.out_dir, self.checkpoint.store)
        return summary


def _progress(info: BatchInfo) -> tuple[str, int, int, str | None]:
    """What the journal keeps of a poll: a poll that changes none of it is not committed."""
    return info.status, info.completed, info.failed, info.output_file_id
