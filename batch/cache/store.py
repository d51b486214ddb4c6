"""The answer cache: content-addressed answers shared by every run of a user on a machine.

One SQLite file in WAL mode (`answers.sqlite3` in the cache directory), chosen by
`bench/cache_store.py`. Lookups are batched point queries on the key's index; writes are
group-committed (durable within ~100 ms); several processes may read and write at once;
memory is the fixed page cache, whatever the number of entries.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from batch.cache.answers import CachedAnswer
from batch.cache.database import Database
from batch.cache.group_commit import DEFAULT_INTERVAL_S, GroupCommit

STORE_FILE = "answers.sqlite3"
SCHEMA_VERSION = 1
# SQLite allows 32,766 parameters; lookups are split well below it.
_LOOKUP_CHUNK = 500

_SCHEMA = """
CREATE TABLE answers (
    key BLOB NOT NULL UNIQUE,
    model TEXT NOT NULL,
    created REAL NOT NULL,
    tokens INTEGER NOT NULL,
    size INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX answers_by_age ON answers (created, model, size)
"""

Entry = tuple[bytes, CachedAnswer]


@dataclass(frozen=True)
class ModelShare:
    """The entries of one model version in the cache."""

    model: str
    entries: int
    payload_bytes: int
    tokens: int


@dataclass(frozen=True)
class CacheInfo:
    """What `gigabatch cache info` shows."""

    path: Path
    entries: int
    file_bytes: int
    oldest: float | None
    newest: float | None
    by_model: list[ModelShare] = field(default_factory=list)


@dataclass(frozen=True)
class PruneReport:
    removed: int
    bytes_before: int
    bytes_after: int


class AnswerStore:
    """The cache of answers in one directory. Use as a context manager, or call close()."""

    def __init__(self, cache_dir: Path, *, commit_interval: float = DEFAULT_INTERVAL_S) -> None:
        self.path = cache_dir / STORE_FILE
        self._db = Database(self.path, _SCHEMA, SCHEMA_VERSION)
        self._writes: GroupCommit[Entry] = GroupCommit(self._insert, interval=commit_interval)

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, CachedAnswer]:
        """The cached answers of those keys that have one (misses are absent)."""
        found: dict[bytes, CachedAnswer] = {}
        with self._db.guard() as db:
            for start in range(0, len(keys), _LOOKUP_CHUNK):
                chunk = keys[start : start + _LOOKUP_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = db.execute(
                    "SELECT key, payload, model, created, tokens FROM answers "
                    f"WHERE key IN ({marks})",
                    chunk,
                )
                for key, payload, model, created, tokens in rows:
                    found[key] = CachedAnswer(payload, model, created, tokens)
        if len(found) < len(keys):
            wanted = set(keys)
            for key, answer in self._writes.pending():
                if key in wanted:
                    found[key] = answer
        return found

    def put_many(self, items: Iterable[Entry]) -> None:
        """Store answers; each is durable within the commit interval (~100 ms). A key already
        present takes the newer answer."""
        self._writes.add(list(items))

    def flush(self) -> None:
        """Commit every answer handed over so far, now."""
        self._writes.flush()

    def _insert(self, items: Sequence[Entry]) -> None:
        rows = [(key, a.model, a.created, a.tokens, len(a.payload), a.payload) for key, a in items]
        with self._db.guard(), self._db.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?)", rows)

    def info(self) -> CacheInfo:
        """Entries, size on disk, share by model, oldest and newest answer."""
        self.flush()
        with self._db.guard() as db:
            rows = db.execute(
                "SELECT model, count(*), sum(size), sum(tokens), min(created), max(created) "
                "FROM answers GROUP BY model ORDER BY count(*) DESC, model"
            ).fetchall()
        shares = [ModelShare(m, n, size, tokens) for m, n, size, tokens, _, _ in rows]
        return CacheInfo(
            path=self.path,
            entries=sum(s.entries for s in shares),
            file_bytes=self._db.file_bytes(),
            oldest=min((r[4] for r in rows), default=None),
            newest=max((r[5] for r in rows), default=None),
            by_model=shares,
        )

    def prune(
        self, *, created_before: float | None = None, max_bytes: int | None = None
    ) -> PruneReport:
        """Drop answers received before `created_before`, then the oldest ones until the file
        holds at most `max_bytes`; the freed pages go back to the file system."""
        self.flush()
        before = self._db.file_bytes()
        removed = 0
        with self._db.guard() as db:
            if created_before is not None:
                with self._db.transaction():
                    removed += db.execute(
                        "DELETE FROM answers WHERE created < ?", (created_before,)
                    ).rowcount
            if max_bytes is not None:
                removed += self._drop_oldest_over(db, max_bytes)
            # execute() steps this pragma once, freeing one page; executescript runs it to the end.
            db.executescript("PRAGMA incremental_vacuum;")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return PruneReport(removed, before, self._db.file_bytes())

    def _drop_oldest_over(self, db: sqlite3.Connection, max_bytes: int) -> int:
        # Called under guard(): deletes in steps sized from the average row, re-measuring the
        # pages in use after each, so the loop ends in a few steps whatever the sizes.
        removed = 0
        while True:
            page_size, pages, free = (
                db.execute(f"PRAGMA {name}").fetchone()[0]
                for name in ("page_size", "page_count", "freelist_count")
            )
            used = (pages - free) * page_size
            (count,) = db.execute("SELECT count(*) FROM answers").fetchone()
            if used <= max_bytes or count == 0:
                return removed
            per_row = max(1, used // count)
            step = max(1, -(-(used - max_bytes) // per_row))
            with self._db.transaction():
                removed += db.execute(
                    "DELETE FROM answers WHERE rowid IN "
                    "(SELECT rowid FROM answers ORDER BY created LIMIT ?)",
                    (step,),
                ).rowcount

    def close(self) -> None:
        """Commit what is pending and close the file."""
        try:
            self._writes.close()
        finally:
            self._db.close()

    def __enter__(self) -> AnswerStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
