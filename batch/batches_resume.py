"""Resuming a `--mode batches` run: the batches its journal records are found again. A
`submitting` record (killed between the upload and the answer) is matched against the list
of the account's batches (`orphan_match`) and adopted or forgotten; every `active` batch's
tasks are rebuilt from the job file, so its answers map to the same jobs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio

from batch.batch_files import repack
from batch.batch_journal import (
    ACTIVE,
    SUBMITTING,
    BatchJournal,
    RecordedBatch,
    in_thread,
    orphan_match,
)
from batch.batches_polling import PatientApi
from batch.errors import ConfigError, PermanentError, RetryableError
from jobs.base import Batch, Job, JobKind

logger = logging.getLogger(__name__)


@dataclass
class Recorded:
    """What a resumed run finds: each active batch with its rebuilt tasks, and how many
    `submitting` records were matched to a batch on the server."""

    active: list[tuple[RecordedBatch, dict[str, Batch]]] = field(default_factory=list)
    adopted: int = 0


async def reattach(
    journal: BatchJournal,
    api: PatientApi,
    client: Any,
    kind: JobKind,
    jobs: Callable[[], Iterator[Job]],
) -> Recorded:
    """The journal's unfinished batches, after looking for the batches of `submitting`
    records on the server; `jobs` reads the job file again (in a worker thread)."""
    found = Recorded()
    recorded = await in_thread(journal.batches, (SUBMITTING, ACTIVE))
    if any(r.state == SUBMITTING for r in recorded):
        found.adopted = await _adopt_orphans(journal, api, client, recorded)
        recorded = await in_thread(journal.batches, (ACTIVE,))
    active = [r for r in recorded if r.state == ACTIVE]
    if not active:
        return found
    tasks = {r.seq: await in_thread(journal.tasks, r.seq) for r in active}
    wanted = {j for t in tasks.values() for ids in t.values() for j in ids}
    by_id = await anyio.to_thread.run_sync(_read_jobs, jobs, wanted)
    for record in active:
        rebuilt = {
            task_id: repack(kind, [by_id[j] for j in ids])
            for task_id, ids in tasks[record.seq].items()
        }
        found.active.append((record, rebuilt))
    return found


async def _adopt_orphans(
    journal: BatchJournal, api: PatientApi, client: Any, recorded: list[RecordedBatch]
) -> int:
    """Record the batch each `submitting` record created, found in the list of all
    batches; a record without one is forgotten and its jobs are submitted again."""
    try:
        listed = await api(client.batch_status)
    except (RetryableError, PermanentError) as exc:
        logger.warning("cannot list the server's batches: %s", exc)
        listed = []
    known = {r.id for r in await in_thread(journal.batches) if r.id}
    adopted = 0
    for record in (r for r in recorded if r.state == SUBMITTING):
        match = orphan_match(record, listed, known)
        if match is None:
            logger.warning(
                "a file of %d jobs was being uploaded when the last run stopped and no "
                "batch on the server matches it: submitting those jobs again", record.jobs
            )
            await in_thread(journal.forget, record.seq)
            continue
        await in_thread(journal.created, record.seq, match)
        known.add(match.id)
        adopted += 1
    return adopted


def _read_jobs(jobs: Callable[[], Iterator[Job]], wanted: set[str]) -> dict[str, Job]:
    found = {job.id: job for job in jobs() if job.id in wanted}
    missing = wanted - found.keys()
    if missing:
        raise ConfigError(f"{len(missing)} jobs of recorded batches are not in the input any more")
    return found
