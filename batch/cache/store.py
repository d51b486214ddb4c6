"""The answer cache: content-addressed answers shared by every run of a user on a machine.

LMDB, in `answers.lmdb/` of the cache directory, chosen by `bench/cache_store.py`: batched
point lookups of 4 KB vectors run ~3x faster per CPU-second than SQLite in WAL mode, and
~5x faster while two other processes write. Readers never block and are never blocked;
writers take turns on LMDB's lock, so several runs share one cache; a commit is a
copy-on-write switch of the root page, so `kill -9` at any instant leaves the last commit.
Writes are group-committed (durable within ~100 ms). The process holds no index of keys:
its own memory stays flat; the file's pages are mapped, and the kernel may drop them.

Three tables: `answers` (key -> answer), `by_age` (created + key -> model, size, tokens:
the ordering prune and info walk without touching the vectors), `meta` (schema version).
"""

from __future__ import annotations

import struct
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import lmdb

from batch.cache.answers import CachedAnswer
from batch.cache.group_commit import DEFAULT_INTERVAL_S, GroupCommit
from batch.errors import CacheUnavailable

STORE_FILE = "answers.lmdb"
SCHEMA_VERSION = 1
# Address space only on Linux and macOS: the file grows with what is stored. Windows sizes
# the file to the whole map at open, so it gets a smaller one.
MAP_SIZE = 2**34 if sys.platform == "win32" else 2**40
_PRUNE_STEP = 5_000

# answers value: created, tokens, length of the model name; then the name and the payload.
_ANSWER_HEAD = struct.Struct("<dqH")
# by_age key: created (big-endian, so keys sort by age), then the answer's key.
_AGE = struct.Struct(">d")
# by_age value: tokens, payload size; then the model name.
_AGE_VALUE = struct.Struct("<qI")

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
    """What `gigabatch cache info` shows. `file_bytes` is the file on disk; `live_bytes` the
    pages in use (pages freed by prune are reused before the file grows)."""

    path: Path
    entries: int
    file_bytes: int
    oldest: float | None
    newest: float | None
    by_model: list[ModelShare] = field(default_factory=list)
    live_bytes: int = 0


@dataclass(frozen=True)
class PruneReport:
    """Entries removed, and the pages in use before and after."""

    removed: int
    bytes_before: int
    bytes_after: int


def _encode(answer: CachedAnswer) -> bytes:
    model = answer.model.encode()
    return _ANSWER_HEAD.pack(answer.created, answer.tokens, len(model)) + model + answer.payload


def _decode(value: bytes | memoryview) -> CachedAnswer:
    """An answer from its stored bytes (or a buffer into the map: the payload is copied once)."""
    created, tokens, model_len = _ANSWER_HEAD.unpack_from(value)
    start = _ANSWER_HEAD.size
    model = bytes(value[start : start + model_len]).decode()
    return CachedAnswer(bytes(value[start + model_len :]), model, created, tokens)


def _age_key(key: bytes, created: float) -> bytes:
    return _AGE.pack(created) + key


def _age_value(answer: CachedAnswer) -> bytes:
    return _AGE_VALUE.pack(answer.tokens, len(answer.payload)) + answer.model.encode()


class _Environment:
    """One LMDB environment per directory per process (LMDB forbids opening one twice in a
    process), shared by every AnswerStore on that directory and closed with the last."""

    _open: ClassVar[dict[Path, _Environment]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, path: Path) -> None:
        self.path = path
        self.users = 0
        path.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(
            str(path), map_size=MAP_SIZE, max_dbs=3, max_readers=256, readahead=False
        )
        # Reader slots of processes killed mid-read would pin old pages: free them.
        self.env.reader_check()
        self.answers = self.env.open_db(b"answers")
        self.by_age = self.env.open_db(b"by_age")
        self.meta = self.env.open_db(b"meta")

    @classmethod
    def acquire(cls, path: Path) -> _Environment:
        with cls._lock:
            shared = cls._open.get(path.resolve())
            if shared is None:
                shared = cls(path)
                cls._open[path.resolve()] = shared
            shared.users += 1
            return shared

    def release(self) -> None:
        with self._lock:
            self.users -= 1
            if self.users == 0:
                del self._open[self.path.resolve()]
                self.env.close()


class AnswerStore:
    """The cache of answers in one directory. Use as a context manager, or call close()."""

    def __init__(self, cache_dir: Path, *, commit_interval: float = DEFAULT_INTERVAL_S) -> None:
        self.path = cache_dir / STORE_FILE
        try:
            self._shared = _Environment.acquire(self.path)
        except (OSError, lmdb.Error) as exc:
            raise self._unavailable(exc) from exc
        self._env = self._shared.env
        self._answers = self._shared.answers
        self._by_age = self._shared.by_age
        self._meta = self._shared.meta
        try:
            self._check_schema()
        except BaseException:
            self._shared.release()
            raise
        self._writes: GroupCommit[Entry] = GroupCommit(self._insert, interval=commit_interval)

    def _check_schema(self) -> None:
        try:
            with self._env.begin(write=True, db=self._meta) as txn:
                found = txn.get(b"schema")
                if found is None:
                    txn.put(b"schema", str(SCHEMA_VERSION).encode())
        except lmdb.Error as exc:
            raise self._unavailable(exc) from exc
        if found is not None and found != str(SCHEMA_VERSION).encode():
            raise CacheUnavailable(
                f"{self.path} has schema {found.decode(errors='replace')}, this gigabatch "
                f"reads {SCHEMA_VERSION}: use another cache directory, or delete it"
            )

    def _unavailable(self, exc: BaseException) -> CacheUnavailable:
        advice = "check the disk has space and the directory is writable"
        if isinstance(exc, lmdb.InvalidError | lmdb.VersionMismatchError | lmdb.CorruptedError):
            advice = "it is not a gigabatch cache: use another cache directory"
        return CacheUnavailable(f"cannot use {self.path}: {exc} ({advice})")

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, CachedAnswer]:
        """The cached answers of those keys that have one (misses are absent)."""
        found: dict[bytes, CachedAnswer] = {}
        # What is not committed yet, taken before the read transaction starts: an answer
        # whose commit ends in between is then in the transaction's snapshot.
        pending = self._writes.pending()
        try:
            with self._env.begin(db=self._answers, buffers=True) as txn:
                for key in keys:
                    value = txn.get(key)
                    if value is not None:
                        found[key] = _decode(value)
        except lmdb.Error as exc:
            raise self._unavailable(exc) from exc
        if pending and len(found) < len(keys):
            wanted = set(keys)
            for key, answer in pending:
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
        try:
            with self._env.begin(write=True) as txn:
                for key, answer in items:
                    # One descent both stores the answer and gives the one it replaces.
                    old = txn.replace(key, _encode(answer), db=self._answers)
                    if old is not None:
                        txn.delete(_age_key(key, _decode(old).created), db=self._by_age)
                    txn.put(_age_key(key, answer.created), _age_value(answer), db=self._by_age)
        except lmdb.Error as exc:
            raise self._unavailable(exc) from exc

    def _ages(self, txn: Any) -> Iterator[tuple[float, bytes, bytes]]:
        """(created, key, by_age value) from the oldest answer to the newest."""
        cursor = txn.cursor(db=self._by_age)
        for age_key, value in cursor.iternext():
            yield _AGE.unpack_from(age_key)[0], age_key[_AGE.size :], value

    def _live_bytes(self, txn: Any) -> int:
        total = 0
        for db in (self._answers, self._by_age, self._meta):
            stat = txn.stat(db)
            pages = stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
            total += pages * stat["psize"]
        return total

    def info(self) -> CacheInfo:
        """Entries, size on disk, share by model, oldest and newest answer."""
        self.flush()
        shares: dict[str, list[int]] = {}
        oldest = newest = None
        with self._env.begin(buffers=False) as txn:
            for created, _, value in self._ages(txn):
                tokens, size = _AGE_VALUE.unpack_from(value)
                share = shares.setdefault(value[_AGE_VALUE.size :].decode(), [0, 0, 0])
                share[0] += 1
                share[1] += size
                share[2] += tokens
                oldest = created if oldest is None else oldest
                newest = created
            live = self._live_bytes(txn)
        by_model = sorted(
            (ModelShare(model, n, size, tokens) for model, (n, size, tokens) in shares.items()),
            key=lambda s: (-s.entries, s.model),
        )
        return CacheInfo(
            path=self.path,
            entries=sum(s.entries for s in by_model),
            file_bytes=(self.path / "data.mdb").stat().st_size,
            oldest=oldest,
            newest=newest,
            by_model=by_model,
            live_bytes=live,
        )

    def prune(
        self, *, created_before: float | None = None, max_bytes: int | None = None
    ) -> PruneReport:
        """Drop answers received before `created_before`, then the oldest ones until the pages
        in use are at most `max_bytes`. Freed pages are reused before the file grows again."""
        self.flush()
        with self._env.begin() as txn:
            before = self._live_bytes(txn)
        removed = 0
        while True:
            with self._env.begin(write=True) as txn:
                live = self._live_bytes(txn)
                # Rows to drop for the size, from the average row: re-measured each round.
                per_row = live // max(1, txn.stat(self._answers)["entries"])
                doomed = []
                for created, key, _ in self._ages(txn):
                    old = created_before is not None and created < created_before
                    if not old and (max_bytes is None or live <= max_bytes):
                        break
                    doomed.append((created, key))
                    if len(doomed) >= _PRUNE_STEP or (
                        not old
                        and max_bytes is not None
                        and len(doomed) * per_row >= live - max_bytes
                    ):
                        break
                for created, key in doomed:
                    txn.delete(key, db=self._answers)
                    txn.delete(_age_key(key, created), db=self._by_age)
            removed += len(doomed)
            if not doomed:
                break
        with self._env.begin() as txn:
            after = self._live_bytes(txn)
        return PruneReport(removed, before, after)

    def close(self) -> None:
        """Commit what is pending and close the file."""
        try:
            self._writes.close()
        finally:
            self._shared.release()

    def __enter__(self) -> AnswerStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
