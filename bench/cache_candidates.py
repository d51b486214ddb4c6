"""The stores bench/cache_store.py compares, each behind the same three calls, and the
workload's keys and values (a 32-byte hash, 4 KB of incompressible bytes like a 1024-float32
vector)."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, cast

VALUE_BYTES = 4096  # 1024 float32


def key_of(i: int) -> bytes:
    return hashlib.blake2b(i.to_bytes(8, "little"), digest_size=32).digest()


def value_of(i: int) -> bytes:
    # Incompressible bytes, as float32 vectors are (a repeated pattern would flatter a store
    # that compresses).
    return hashlib.shake_128(i.to_bytes(8, "little")).digest(VALUE_BYTES)


class Candidate(Protocol):
    def put_many(self, items: Sequence[tuple[bytes, bytes]]) -> None: ...
    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, bytes]: ...
    def close(self) -> None: ...


class SqliteWal:
    name = "sqlite-wal"

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path / "store.sqlite3", timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB NOT NULL)")

    def put_many(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?)", items)
        self.db.execute("COMMIT")

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        marks = ",".join("?" * len(keys))
        return dict(self.db.execute(f"SELECT k, v FROM kv WHERE k IN ({marks})", keys))

    def close(self) -> None:
        self.db.close()


class SqliteWalRowid(SqliteWal):
    """The layout AnswerStore uses: the row id is a 64-bit hash of the key, so a lookup is
    one descent of the table's B-tree instead of the key's index and then the table."""

    name = "sqlite-wal, id = hash"

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path / "store.sqlite3", timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS kv (id INTEGER PRIMARY KEY, k BLOB, v BLOB)")

    def put_many(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        rows = [(int.from_bytes(k[:8], "little", signed=True), k, v) for k, v in items]
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", rows)
        self.db.execute("COMMIT")

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        ids = [int.from_bytes(k[:8], "little", signed=True) for k in keys]
        marks = ",".join("?" * len(ids))
        return dict(self.db.execute(f"SELECT k, v FROM kv WHERE id IN ({marks})", ids))


class Lmdb:
    name = "lmdb"

    def __init__(self, path: Path) -> None:
        import lmdb

        self.env = lmdb.open(str(path / "lmdb"), map_size=1 << 36, max_readers=64)

    def put_many(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        with self.env.begin(write=True) as txn:
            for key, value in items:
                txn.put(key, value)

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        found: dict[bytes, bytes] = {}
        with self.env.begin(buffers=False) as txn:
            for key in keys:
                value = txn.get(key)
                if value is not None:
                    found[key] = value
        return found

    def close(self) -> None:
        self.env.close()


class DuckDb:
    name = "duckdb"

    def __init__(self, path: Path) -> None:
        import duckdb

        self.db = duckdb.connect(str(path / "store.duckdb"))
        self.db.execute("CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB NOT NULL)")

    def put_many(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        import pyarrow as pa

        # executemany goes row by row in DuckDB (~100 rows/s here); an Arrow scan is its
        # bulk path.
        batch = pa.table(
            {"k": pa.array([k for k, _ in items]), "v": pa.array([v for _, v in items])}
        )
        self.db.register("batch", batch)
        self.db.execute("INSERT OR REPLACE INTO kv SELECT k, v FROM batch")
        self.db.unregister("batch")

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        marks = ",".join("?" * len(keys))
        rows = self.db.execute(f"SELECT k, v FROM kv WHERE k IN ({marks})", list(keys))
        return {bytes(k): bytes(v) for k, v in rows.fetchall()}

    def close(self) -> None:
        self.db.close()


class RocksDict:
    name = "rocksdb (rocksdict)"

    def __init__(self, path: Path) -> None:
        from rocksdict import Rdict, WriteBatch

        self._batch = WriteBatch
        self.db = Rdict(str(path / "rocks"))

    def put_many(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        batch = self._batch()
        for key, value in items:
            batch.put(key, value)
        self.db.write(batch)

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        values = cast("list[bytes | None]", self.db.get(list(keys)))
        return {k: v for k, v in zip(keys, values, strict=True) if v is not None}

    def close(self) -> None:
        self.db.close()


CANDIDATES: dict[str, Callable[[Path], Candidate]] = {
    "sqlite": SqliteWal,
    "sqlite-rowid": SqliteWalRowid,
    "lmdb": Lmdb,
    "duckdb": DuckDb,
    "rocksdict": RocksDict,
}
