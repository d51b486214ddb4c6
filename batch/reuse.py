"""Answers a run does not pay for again: hits in the answer cache, and answers the output
directory's journal received before a `kill -9`.

    producer: lookup(jobs) -> the jobs answered already (rows, usage) + the jobs to send
    workers:  keep(outcomes) -> the cache (cached kinds), else the journal; durable ~100 ms

For a run whose kind's answers are cached, the cache is the journal: a resume finds every
answer received before the kill there. Otherwise (chat without `--cache`) answers go to
`DIR/journal.sqlite3`, keyed by job id, which a clean end of the run deletes.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from batch.cache import AnswerJournal, AnswerStore, cache_key, resolve_cache_dir
from batch.cache.answers import CachedAnswer
from batch.cache.journal import JOURNAL_FILE
from batch.changes import ChangeFilter
from batch.errors import CacheUnavailable
from batch.limit_memory import LimitMemory
from jobs.base import Job, JobKind, JobOutcome, JobResult

if TYPE_CHECKING:
    from batch.settings import ClientSettings

logger = logging.getLogger(__name__)


# How answers are keyed (`AnswerReuse.keyed_by`).
CONTENT, JOB_ID = "content", "id"


def answer_entries(
    kind: JobKind, outcomes: Sequence[JobOutcome], keyed_by: str
) -> list[tuple[bytes, CachedAnswer]]:
    """The answers among `outcomes` as cache entries (key `CONTENT`) or journal entries
    (key `JOB_ID`); pure, so a cluster worker makes them and the driver keeps them."""
    entries: list[tuple[bytes, CachedAnswer]] = []
    for outcome in outcomes:
        if not isinstance(outcome, JobResult):
            continue
        answer = kind.cache_entry(outcome)
        if answer is None:
            continue
        if keyed_by == CONTENT:
            material = kind.cache_material(outcome.job)
            if material is not None:
                entries.append((cache_key(kind.name, material), answer))
        else:
            entries.append((outcome.job.id.encode(), answer))
    return entries


@dataclass(slots=True)
class Reused:
    """What `lookup` found: `hits` in the cache, each job with its answer (the run bills
    them nothing), `journalled` answers of an earlier leg of this output (billed by that
    leg), and the jobs still to send."""

    kind: JobKind
    hits: list[tuple[Job, CachedAnswer]] = field(default_factory=list)
    journalled: list[JobResult] = field(default_factory=list)
    to_send: list[Job] = field(default_factory=list)

    @property
    def cached(self) -> list[JobResult]:
        """The hits as results, row by row (their usage is what the answer was billed when
        first received)."""
        return [self.kind.cached_row(job, answer) for job, answer in self.hits]


class AnswerReuse:
    """The run's answer cache and journal, as the producer and the workers meet them."""

    def __init__(
        self,
        kind: JobKind,
        *,
        store: AnswerStore | None = None,
        journal: AnswerJournal | None = None,
    ) -> None:
        self.kind = kind
        self.store = store
        self.journal = journal
        # Only a journal left by an earlier leg can answer anything.
        self._journal_has_entries = journal is not None and len(journal) > 0
        self.failed = False  # a commit failed (a full disk): answers are kept no more

    @classmethod
    def open(
        cls, kind: JobKind, out_dir: Path, *, cache_dir: Path | None, restart: bool = False
    ) -> AnswerReuse:
        """The cache in `cache_dir` (None: the run uses none) and, when the run keeps answers
        outside it, the journal in `out_dir` (emptied by `restart`)."""
        if cache_dir is not None and kind.keeps_answers:
            return cls(kind, store=AnswerStore(cache_dir))
        if not kind.keeps_answers:
            return cls(kind)
        if restart:
            with contextlib.suppress(FileNotFoundError):
                (out_dir / JOURNAL_FILE).unlink()
        out_dir.mkdir(parents=True, exist_ok=True)
        return cls(kind, journal=AnswerJournal(out_dir))

    @property
    def active(self) -> bool:
        return self.store is not None or self._journal_has_entries

    def lookup(self, jobs: Sequence[Job]) -> Reused:
        """Split `jobs` into those answered already and those to send. Blocking (LMDB or
        SQLite reads): the producer calls it from its thread, once per chunk of jobs."""
        found = Reused(self.kind)
        if self.store is not None:
            keyed = self._keyed(jobs, found.to_send)
            answers = self.store.get_many([key for key, _ in keyed])
            for key, job in keyed:
                answer = answers.get(key)
                if answer is None:
                    found.to_send.append(job)
                else:
                    found.hits.append((job, answer))
        elif self.journal is not None and self._journal_has_entries:
            journalled = self.journal.get_many([job.id.encode() for job in jobs])
            for job in jobs:
                answer = journalled.get(job.id.encode())
                if answer is None:
                    found.to_send.append(job)
                else:
                    found.journalled.append(self.kind.cached_row(job, answer))
        else:
            found.to_send.extend(jobs)
        return found

    def _keyed(self, jobs: Sequence[Job], unkeyed: list[Job]) -> list[tuple[bytes, Job]]:
        """(cache key, job) for the jobs the kind gives key material for; the rest go to
        `unkeyed`."""
        keyed = []
        for job in jobs:
            material = self.kind.cache_material(job)
            if material is None:
                unkeyed.append(job)
            else:
                keyed.append((cache_key(self.kind.name, material), job))
        return keyed

    @property
    def keyed_by(self) -> str | None:
        """How answers are kept: by their content ("content", the cache), by job id ("id",
        the journal), or not at all (None)."""
        if self.store is not None:
            return CONTENT
        return JOB_ID if self.journal is not None else None

    def keep(self, outcomes: Sequence[JobOutcome]) -> None:
        """Hand the answers of a sent batch to the cache or the journal (group-committed:
        each is durable within ~100 ms, and findable by `lookup` at once)."""
        keyed_by = self.keyed_by
        if keyed_by is not None:
            self.put(answer_entries(self.kind, outcomes, keyed_by))

    def put(self, entries: Sequence[tuple[bytes, CachedAnswer]]) -> None:
        """Keep answers made into entries already (`answer_entries`, on a cluster worker)."""
        if not entries or self.failed:
            return
        try:
            if self.store is not None:
                self.store.put_many(entries)
            elif self.journal is not None:
                self.journal.append_many(entries)
        except CacheUnavailable as exc:
            # The answers themselves still reach the output; only their reuse is lost.
            self.failed = True
            logger.warning("answers are no longer kept for reuse: %s", exc)

    def close(self, *, finished: bool) -> None:
        """Commit what is pending and close. A `finished` run has every answer in committed
        parts, so its journal is deleted."""
        try:
            if self.store is not None:
                self.store.close()
            if self.journal is not None:
                self.journal.close()
        except CacheUnavailable as exc:
            if not self.failed:
                logger.warning("the last answers were not kept for reuse: %s", exc)
        if self.journal is not None and finished:
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    self.journal.path.with_name(self.journal.path.name + suffix).unlink()


class CachedJobs:
    """The jobs of a stream the answer cache cannot answer; `answered` counts the others
    (what `estimate` prices at nothing)."""

    def __init__(self, answers: AnswerReuse, *, chunk: int = 512) -> None:
        self.answers = answers
        self.chunk = chunk
        self.answered = 0

    def misses(self, jobs: Iterable[Job]) -> Iterator[Job]:
        iterator = iter(jobs)
        while chunk := list(itertools.islice(iterator, self.chunk)):
            found = self.answers.lookup(chunk)
            self.answered += len(found.hits)
            yield from found.to_send


@dataclass(frozen=True)
class RunReuse:
    """What a run reuses: answers (cache or journal), the earlier output it is compared
    with (--changed-since), and the remembered stream limit of its endpoint."""

    answers: AnswerReuse
    changes: ChangeFilter | None
    limit: LimitMemory | None

    @classmethod
    def open(
        cls,
        kind: JobKind,
        out_dir: Path,
        *,
        cache: bool | None,
        cache_dir: Path | None,
        changed_since: Path | None,
        client_settings: ClientSettings | None,
        restart: bool,
    ) -> RunReuse:
        """`cache` None uses the cache when the kind's answers are cached by default;
        `cache_dir` None is GIGABATCH_CACHE_DIR, else the user cache directory. The limit
        is remembered for runs whose endpoint is known (`client_settings`), cache or not."""
        directory = resolve_cache_dir(cache_dir, os.environ)
        use_cache = cache if cache is not None else kind.cached_by_default
        changes = None
        if changed_since is not None:
            changes = ChangeFilter.open(changed_since, kind.result_schema(), kind.name)
        limit = None
        if client_settings is not None:
            model = str(kind.answer_settings().get("model") or "")
            limit = LimitMemory.of(
                directory, client_settings.base_url, client_settings.scope, model
            )
        answers = AnswerReuse.open(
            kind, out_dir, cache_dir=directory if use_cache else None, restart=restart
        )
        return cls(answers, changes, limit)
