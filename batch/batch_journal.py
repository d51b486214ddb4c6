"""The journal of a `--mode batches` run: every batch file sent to GigaChat's batch API, with
the job ids each of its tasks carries, in `DIR/batches.sqlite` (WAL, synchronous=FULL, so
each commit is on disk when it returns).

A batch is recorded as `submitting` before its file is uploaded and as `active` with the
server's id right after the answer, so a run killed at any moment finds on resume every
batch whose id it was told, re-attaches to it, and never submits its jobs again. `collected`
means its results are committed as parts.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
import orjson

from batch.api_types import BatchInfo
from batch.errors import RunRefused

JOURNAL = "batches.sqlite"
# How much earlier than its `submitting` record a server's batch may say it was created
# (clock skew) and still be taken for that record's lost batch.
ORPHAN_SLACK_S = 600.0
SUBMITTING, ACTIVE, COLLECTED = "submitting", "active", "collected"
T = TypeVar("T")

_SCHEMA = """
create table if not exists batches (
    seq integer primary key,
    id text unique,
    method text not null,
    state text not null,
    tasks integer not null,
    jobs integer not null,
    recorded_at real not null,
    server_status text,
    completed integer not null default 0,
    failed integer not null default 0,
    output_file_id text,
    updated_at real
);
create table if not exists tasks (
    seq integer not null references batches(seq),
    task_id text not null,
    job_ids blob not null,
    primary key (seq, task_id)
);
"""


@dataclass(frozen=True, slots=True)
class RecordedBatch:
    """One batch as the journal knows it; `id` is None while it is `submitting`."""

    seq: int
    id: str | None
    method: str
    state: str
    tasks: int
    jobs: int
    recorded_at: float
    server_status: str | None
    completed: int
    failed: int
    output_file_id: str | None


class BatchJournal:
    """The journal of one output directory; use `BatchJournal.open(out_dir)`."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._db = connection

    @classmethod
    def open(cls, out_dir: Path) -> BatchJournal:
        out_dir.mkdir(parents=True, exist_ok=True)
        # Used from worker threads (a run's commits), one call at a time.
        db = sqlite3.connect(out_dir / JOURNAL, isolation_level=None, check_same_thread=False)
        db.execute("pragma journal_mode=wal")
        db.execute("pragma synchronous=full")
        db.executescript(_SCHEMA)
        return cls(db)

    @staticmethod
    def exists(out_dir: Path) -> bool:
        return (out_dir / JOURNAL).exists()

    @staticmethod
    def remove(out_dir: Path) -> None:
        """Delete the journal (for --restart)."""
        for suffix in ("", "-wal", "-shm"):
            (out_dir / f"{JOURNAL}{suffix}").unlink(missing_ok=True)

    def close(self) -> None:
        self._db.close()

    def begin(self, method: str, tasks: Mapping[str, list[str]]) -> int:
        """Record a batch file about to be uploaded (durably); its sequence number."""
        jobs = sum(len(ids) for ids in tasks.values())
        with self._transaction():
            cursor = self._db.execute(
                "insert into batches (method, state, tasks, jobs, recorded_at) "
                "values (?, ?, ?, ?, ?)",
                (method, SUBMITTING, len(tasks), jobs, time.time()),
            )
            seq = int(cursor.lastrowid or 0)
            self._db.executemany(
                "insert into tasks (seq, task_id, job_ids) values (?, ?, ?)",
                ((seq, task_id, orjson.dumps(ids)) for task_id, ids in tasks.items()),
            )
        return seq

    def created(self, seq: int, info: BatchInfo) -> RecordedBatch:
        """The server created batch `seq` as `info.id`: recorded before anything else."""
        with self._transaction():
            self._db.execute(
                "update batches set id = ?, state = ?, server_status = ?, updated_at = ? "
                "where seq = ?",
                (info.id, ACTIVE, info.status, time.time(), seq),
            )
        [record] = self._select("where seq = ?", (seq,))
        return record

    def forget(self, seq: int) -> None:
        """Drop a batch the server did not create (its jobs are pending again)."""
        with self._transaction():
            self._db.execute("delete from tasks where seq = ?", (seq,))
            self._db.execute("delete from batches where seq = ?", (seq,))

    def polled(self, seq: int, info: BatchInfo) -> None:
        with self._transaction():
            self._db.execute(
                "update batches set server_status = ?, completed = ?, failed = ?, "
                "output_file_id = ?, updated_at = ? where seq = ?",
                (info.status, info.completed, info.failed, info.output_file_id, time.time(), seq),
            )

    def collected(self, seq: int) -> None:
        """Batch `seq`'s results are committed: it is done with."""
        with self._transaction():
            self._db.execute(
                "update batches set state = ?, updated_at = ? where seq = ?",
                (COLLECTED, time.time(), seq),
            )

    def batches(
        self, states: Iterable[str] = (SUBMITTING, ACTIVE, COLLECTED)
    ) -> list[RecordedBatch]:
        wanted = tuple(states)
        return self._select(f"where state in ({','.join('?' * len(wanted))})", wanted)

    def _select(self, where: str, parameters: tuple[object, ...]) -> list[RecordedBatch]:
        rows = self._db.execute(
            "select seq, id, method, state, tasks, jobs, recorded_at, server_status, "
            f"completed, failed, output_file_id from batches {where} order by seq",
            parameters,
        ).fetchall()
        return [RecordedBatch(*row) for row in rows]

    def tasks(self, seq: int) -> dict[str, list[str]]:
        """Task id -> the job ids it carries, for batch `seq`."""
        rows = self._db.execute("select task_id, job_ids from tasks where seq = ?", (seq,))
        return {task_id: orjson.loads(ids) for task_id, ids in rows}

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


async def in_thread(method: Callable[..., T], *args: Any) -> T:
    """A journal call from async code, in a worker thread: a commit waits for the disk
    (synchronous=FULL), which must not stall the event loop."""
    return await anyio.to_thread.run_sync(partial(method, *args))


class _Transaction:
    """`with`: one immediate transaction, committed (synchronously, to disk) on success."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("begin immediate")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("rollback" if exc_type is not None else "commit")


def recorded_batches(out_dir: Path) -> list[RecordedBatch]:
    """Every batch the journal of `out_dir` records (none when it has no journal)."""
    if not BatchJournal.exists(out_dir):
        return []
    journal = BatchJournal.open(out_dir)
    try:
        return journal.batches()
    finally:
        journal.close()


def prepare_online_run(out_dir: Path, *, restart: bool) -> None:
    """An online run must not send jobs that batches on the server still carry; a restart
    forgets them (with the rest of the output)."""
    if restart:
        BatchJournal.remove(out_dir)
        return
    waiting = [b for b in recorded_batches(out_dir) if b.state in (SUBMITTING, ACTIVE)]
    if waiting:
        raise RunRefused(
            f"{out_dir} has {len(waiting)} batch(es) still waiting on the server "
            f"({sum(b.jobs for b in waiting)} jobs): resume with --mode batches first"
        )


def orphan_match(
    record: RecordedBatch, listed: list[BatchInfo], known: set[str]
) -> BatchInfo | None:
    """The server's batch that a `submitting` record's upload created, if exactly one fits:
    an id the journal does not know, the same method and task count, created no earlier
    than the record (less ORPHAN_SLACK_S). A wrong match cannot mix answers up: task ids
    carry a per-file nonce, so another file's lines match none of the record's tasks."""
    earliest = record.recorded_at - ORPHAN_SLACK_S
    fits = [
        info
        for info in listed
        if info.id not in known
        and info.method == record.method
        and info.total == record.tasks
        and (info.created_at is None or info.created_at >= earliest)
    ]
    return fits[0] if len(fits) == 1 else None
