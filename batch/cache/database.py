"""One SQLite file in WAL mode, opened the way every store here needs it: safe with several
processes at once, consistent after `kill -9` at any instant, memory bounded by a fixed page
cache whatever the file's size. Every sqlite3 error leaves as CacheUnavailable, naming the
file and what to do.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from batch.errors import CacheUnavailable

# Another process may hold the write lock for one group commit; wait well past that.
BUSY_TIMEOUT_S = 30.0
# The page cache is the store's whole memory: fixed, whatever the number of entries.
PAGE_CACHE_KIB = 16 * 1024
# At 4 KiB pages a 4 KB vector takes one overflow page plus ~0.5 KB in a leaf (~4.6 KB a
# row); at 8 KiB only one row fits a page (8 KB a row).
PAGE_SIZE = 4096
# The write-ahead log is cut back to this after a checkpoint, so it does not stay at its
# largest size on disk.
WAL_LIMIT_BYTES = 64 * 2**20


class Database:
    """A connection to one SQLite file, shared by the threads of one process under a lock."""

    def __init__(self, path: Path, schema: str, schema_version: int) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise self.unavailable(exc) from exc
        with self.guard():
            self._configure(schema, schema_version)

    def _configure(self, schema: str, schema_version: int) -> None:
        db = self._db
        if db.execute("PRAGMA page_count").fetchone()[0] == 0:
            # Both only take effect on a new file (on an old one, setting them writes a page).
            db.execute(f"PRAGMA page_size={PAGE_SIZE}")
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL: a commit survives the process dying at once (kill -9); only a power
        # loss can take back the last commits, and never corrupts the file.
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")
        db.execute("PRAGMA mmap_size=0")
        db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
        with self.transaction():
            db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value)")
            row = db.execute("SELECT value FROM meta WHERE name='schema'").fetchone()
            if row is None:
                for statement in schema.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("INSERT INTO meta VALUES ('schema', ?)", (schema_version,))
            elif row[0] != schema_version:
                raise CacheUnavailable(
                    f"{self.path} has schema {row[0]}, this gigabatch reads {schema_version}: "
                    "use another cache directory, or delete this file"
                )

    @contextlib.contextmanager
    def guard(self) -> Iterator[sqlite3.Connection]:
        """The connection, held by this thread; sqlite3 errors become CacheUnavailable."""
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise self.unavailable(exc) from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (call inside guard()): the write lock is taken at the start, so
        two processes never deadlock upgrading a read."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def file_bytes(self) -> int:
        """Bytes on disk: the database and its write-ahead log."""
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(FileNotFoundError):
                total += self.path.with_name(self.path.name + suffix).stat().st_size
        return total

    def unavailable(self, exc: BaseException) -> CacheUnavailable:
        advice = "check the disk has space and the directory is writable"
        if isinstance(exc, sqlite3.DatabaseError) and "not a database" in str(exc):
            advice = "it is not a gigabatch store: use another cache directory"
        return CacheUnavailable(f"cannot use {self.path}: {exc} ({advice})")

    def close(self) -> None:
        with self._lock:
            self._db.close()
