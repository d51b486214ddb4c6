"""A run's preparation, before anything is sent: the output directory locked, the input
validated, the checkpoint, event log and reuse (cache, journal, changes) opened, and the
start line's facts gathered. A signal meanwhile stops it with Interrupted; `batch.runner`
then executes the `Prepared` and releases its lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import anyio

from batch.budget import Budget
from batch.checkpoint import FAILED_SCHEMA, Checkpoint
from batch.errors import GigabatchError, RunRefused
from batch.eventlog import EventLog
from batch.part_store import part_store
from batch.pricing import PriceTable
from batch.progress import RunStart
from batch.reuse import RunReuse
from batch.run_config import RunConfig
from batch.run_lock import RunLock
from batch.stopping import EarlySignals
from batch.storage import check_writable
from batch.summary import RunStats
from jobs.base import JobKind
from jobs.passthrough import KeepSpec
from jobs.readers import ValidationReport, validate_jobs


@dataclass(frozen=True)
class Prepared:
    """What a prepared run starts from."""

    config: RunConfig
    checkpoint: Checkpoint
    stats: RunStats
    budget: Budget | None
    report: ValidationReport
    events: EventLog
    start: RunStart
    reuse: RunReuse
    lock: RunLock | None  # None when the caller holds the output's lock


def refuse_on_cluster(config: RunConfig) -> None:
    """Refuse what a run on a Ray cluster cannot do."""
    if config.client_factory is not None:
        raise RunRefused("a client_factory cannot be sent to Ray workers: give client_settings")


async def prepare_watching_signals(config: RunConfig) -> Prepared:
    """`prepare` under the output's lock (unless the caller holds it), with Ctrl-C and
    SIGTERM turned into Interrupted meanwhile: from before the lock is taken, so a signal
    never finds the process locked but without a handler (the default action, no message)."""
    early = EarlySignals()
    prepared: Prepared | GigabatchError
    async with anyio.create_task_group() as signals:
        if config.handle_signals:
            await signals.start(early.watch)
        try:
            prepared = await _prepare_locked(config, early)
        except GigabatchError as exc:  # raised outside the group, not in an ExceptionGroup
            prepared = exc
        signals.cancel_scope.cancel()
    if isinstance(prepared, GigabatchError):
        raise prepared
    return prepared


async def _prepare_locked(config: RunConfig, early: EarlySignals) -> Prepared:
    """Lock the output directory, check that it is writable, then `prepare`; the lock is
    released again when the preparation fails."""
    lock = None
    if not config.locked_by_caller:
        lock = await anyio.to_thread.run_sync(RunLock.acquire, config.out_dir)
    try:
        await anyio.to_thread.run_sync(check_writable, config.out_dir)
        return await prepare(config, early, lock)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


async def prepare(config: RunConfig, early: EarlySignals, lock: RunLock | None) -> Prepared:
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
    checkpoint = await anyio.to_thread.run_sync(_open_checkpoint, config, report, keep)
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
    events = await anyio.to_thread.run_sync(_open_events, config, report, checkpoint)
    reuse = await anyio.to_thread.run_sync(_open_reuse, config)
    start = _run_start(config, report, len(checkpoint.done), prices)
    return Prepared(config, checkpoint, stats, budget, report, events, start, reuse, lock)


def _open_checkpoint(config: RunConfig, report: ValidationReport, keep: KeepSpec) -> Checkpoint:
    """The checkpoint of `config.out_dir`, for this input and these settings."""
    kind = config.kind
    settings = dict(kind.answer_settings())
    if config.changed_since is not None:
        settings["changed_since"] = str(config.changed_since.resolve())
    return Checkpoint.open(
        config.out_dir,
        kind=kind.name,
        input_path=str(config.jobs_path),
        input_fingerprint=report.fingerprint,
        settings={**settings, **keep.settings()},
        total_jobs=report.jobs,
        restart=config.restart,
        retry_failed=config.retry_failed,
        setting_hints=kind.setting_hints(),
        store=part_store(config.out_dir, config.output),
    )


def _open_events(config: RunConfig, report: ValidationReport, checkpoint: Checkpoint) -> EventLog:
    """The run's event log (OUT/events.bin)."""
    return EventLog.open(
        config.out_dir,
        max_concurrency=config.max_concurrency,
        max_cost=config.max_cost,
        max_tokens=config.max_tokens,
        done_before=len(checkpoint.done),
        total_jobs=report.jobs,
        restart=config.restart,
    )


def _open_reuse(config: RunConfig) -> RunReuse:
    """What the run reuses: the answer cache, the journal, the earlier output's changes."""
    return RunReuse.open(
        config.kind,
        config.out_dir,
        cache=config.cache,
        cache_dir=config.cache_dir,
        changed_since=config.changed_since,
        client_settings=config.client_settings,
        restart=config.restart,
    )


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
        out_dir=config.shown_out,
        kind=config.kind.name,
        model=config.kind.answer_settings().get("model"),
        total_jobs=report.jobs,
        done_before=done_before,
        max_concurrency=config.max_concurrency,
        budget=" and ".join(limits) or None,
        invalid=report.invalid_records,
    )
