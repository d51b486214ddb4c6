"""The answer journal of one output directory: every answer received is durable within
~100 ms, before the Parquet part that will hold it is written.

For kinds whose answers are not cached (chat without `--cache`) this is what a resume after
`kill -9` reads instead of paying again. Entries keep the order they arrived in (`seq`);
once a part holding them is committed, `delete_up_to(seq)` drops them. The same CachedAnswer
and group commit as the cache, but in SQLite (WAL), `DIR/journal.sqlite3`: a journal is
appended, read in order and cut from the front, which SQLite's AUTOINCREMENT and range
deletes do in a few lines; it is never looked up at the cache's rate, and its file shrinks
back when drained (LMDB's never does).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from batch.cache.answers import CachedAnswer
from batch.cache.database import Database
from batch.cache.group_commit import DEFAULT_INTERVAL_S, GroupCommit

JOURNAL_FILE = "journal.sqlite3"
SCHEMA_VERSION = 1
_LOOKUP_CHUNK = 500

_SCHEMA = """
CREATE TABLE journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key BLOB NOT NULL UNIQUE,
    model TEXT NOT NULL,
    created REAL NOT NULL,
    tokens INTEGER NOT NULL,
    payload BLOB NOT NULL
)
"""

Entry = tuple[bytes, CachedAnswer]


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One journalled answer, with its place in arrival order."""

    seq: int
    key: bytes
    answer: CachedAnswer


class AnswerJournal:
    """The journal in one output directory. Keys are the kind's choice: a job id for uncached
    chat, so a resume knows which jobs are already answered."""

    def __init__(self, out_dir: Path, *, commit_interval: float = DEFAULT_INTERVAL_S) -> None:
        self.path = out_dir / JOURNAL_FILE
        self._db = Database(self.path, _SCHEMA, SCHEMA_VERSION)
        self._writes: GroupCommit[Entry] = GroupCommit(self._insert, interval=commit_interval)

    def append_many(self, items: Iterable[Entry]) -> None:
        """Journal answers; each is durable within the commit interval (~100 ms)."""
        self._writes.add(list(items))

    def flush(self) -> None:
        """Commit everything appended so far, now."""
        self._writes.flush()

    def _insert(self, items: Sequence[Entry]) -> None:
        rows = [(key, a.model, a.created, a.tokens, a.payload) for key, a in items]
        with self._db.guard(), self._db.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO journal (key, model, created, tokens, payload) "
                "VALUES (?, ?, ?, ?, ?)",
                rows,
            )

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, CachedAnswer]:
        """The committed answers of those keys that have one."""
        found: dict[bytes, CachedAnswer] = {}
        with self._db.guard() as db:
            for start in range(0, len(keys), _LOOKUP_CHUNK):
                chunk = keys[start : start + _LOOKUP_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = db.execute(
                    "SELECT key, payload, model, created, tokens FROM journal "
                    f"WHERE key IN ({marks})",
                    chunk,
                )
                for key, payload, model, created, tokens in rows:
                    found[key] = CachedAnswer(payload, model, created, tokens)
        return found

    def drain(self, *, after: int = 0, limit: int = 2_000) -> list[JournalEntry]:
        """Up to `limit` committed entries with seq > `after`, in arrival order: read them in
        pages (pass the last seq back as `after`) to keep memory bounded."""
        with self._db.guard() as db:
            rows = db.execute(
                "SELECT seq, key, payload, model, created, tokens FROM journal "
                "WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
        return [JournalEntry(s, k, CachedAnswer(p, m, c, t)) for s, k, p, m, c, t in rows]

    def delete_up_to(self, seq: int) -> int:
        """Drop every entry with seq <= `seq` (their answers are in committed parts now);
        returns how many were dropped."""
        with self._db.guard(), self._db.transaction() as db:
            return db.execute("DELETE FROM journal WHERE seq <= ?", (seq,)).rowcount

    def delete_many(self, keys: Sequence[bytes]) -> int:
        """Drop the entries of these keys (the ids a just-committed part holds): the writer
        knows its rows' ids, not their seqs. Returns how many were dropped."""
        self.flush()
        dropped = 0
        with self._db.guard(), self._db.transaction() as db:
            for start in range(0, len(keys), _LOOKUP_CHUNK):
                chunk = keys[start : start + _LOOKUP_CHUNK]
                marks = ",".join("?" * len(chunk))
                dropped += db.execute(f"DELETE FROM journal WHERE key IN ({marks})", chunk).rowcount
        return dropped

    def __len__(self) -> int:
        with self._db.guard() as db:
            (count,) = db.execute("SELECT count(*) FROM journal").fetchone()
        return int(count)

    def close(self) -> None:
        """Commit what is pending and close the file."""
        try:
            self._writes.close()
        finally:
            self._db.close()

    def __enter__(self) -> AnswerJournal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
