"""`--changed-since PREV_OUT`: an output that holds only what changed since an earlier one,
for upserts into a vector store or a search index.

    OUT/results/   rows whose id is new, or whose answer differs from PREV_OUT's row
    OUT/removed/   one `id` column: the ids of PREV_OUT/results that the input no longer has

Two rows are the same answer when every result column but the engine's (`id`,
`latency_ms`, `attempts`, `cached`) is equal, so a changed `metadata` is a change too.
PREV_OUT's answers are kept as a 16-byte digest per id (about 120 bytes each in memory).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from batch.checkpoint import read_status
from batch.errors import ConfigError, GigabatchError
from batch.layout import RESULTS, write_atomic
from batch.writer import Outcomes, rows_to_table

REMOVED = "removed"
# Columns the engine fills per run: they differ between equal answers.
_RUN_COLUMNS = frozenset({"id", "latency_ms", "attempts", "cached"})


class ChangeFilter:
    """The earlier output's answers by id, and the ids this run's input has not shown yet."""

    def __init__(self, previous: dict[str, bytes], schema: pa.Schema) -> None:
        self.previous = previous
        self.schema = schema
        self.columns = _compared(schema)
        self._unseen = set(previous)

    @classmethod
    def open(cls, prev_dir: Path, schema: pa.Schema, kind_name: str) -> ChangeFilter:
        """The answers of `prev_dir`, an output of the same kind. Raises ConfigError when it
        is not one."""
        try:
            manifest, _ = read_status(prev_dir)
        except (OSError, GigabatchError) as exc:
            raise ConfigError(
                f"--changed-since {prev_dir}: not a gigabatch output directory ({exc})"
            ) from None
        if manifest.get("kind") != kind_name:
            raise ConfigError(
                f"--changed-since {prev_dir}: holds {manifest.get('kind')} jobs, "
                f"this run is {kind_name}"
            )
        columns = ["id", *_compared(schema)]
        parts = sorted((prev_dir / RESULTS).glob("part-*.parquet"))
        previous: dict[str, bytes] = {}
        if parts:
            dataset = ds.dataset(parts)
            missing = [c for c in columns if c not in dataset.schema.names]
            if missing:
                raise ConfigError(
                    f"--changed-since {prev_dir}: its results have no {', '.join(missing)} "
                    "column (written with other settings?)"
                )
            for batch in dataset.to_batches(columns=columns):
                table = pa.Table.from_batches([batch])
                ids = table.column("id").to_pylist()
                previous.update(zip(ids, row_digests(table, columns[1:]), strict=True))
        return cls(previous, schema)

    def seen(self, job_id: str) -> None:
        """The input has `job_id` (called for every job read, done or not)."""
        self._unseen.discard(job_id)

    def drop_unchanged(self, out: Outcomes) -> int:
        """Remove from `out` the result rows answered as in the earlier output; returns how
        many were removed."""
        # Only the compared columns: rows also carry the engine's and the kept input's.
        compared = [{name: row.get(name) for name in self.schema.names} for row in out.results]
        table = rows_to_table(compared, self.schema)
        digests = row_digests(table, self.columns)
        kept = [
            row
            for row, digest in zip(out.results, digests, strict=True)
            if self.previous.get(row["id"]) != digest
        ]
        dropped = len(out.results) - len(kept)
        out.results = kept
        tables = []
        for table in out.tables:
            ids = table.column("id").to_pylist()
            changed = [
                self.previous.get(job_id) != digest
                for job_id, digest in zip(ids, row_digests(table, self.columns), strict=True)
            ]
            tables.append(table.filter(pa.array(changed, pa.bool_())))
            dropped += table.num_rows - tables[-1].num_rows
        out.tables = tables
        return dropped

    def write_removed(self, out_dir: Path) -> None:
        """Write OUT/removed/part-00001.parquet: the earlier ids the input no longer has
        (call once the whole input was read)."""
        table = pa.table({"id": pa.array(sorted(self._unseen), pa.string())})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        (out_dir / REMOVED).mkdir(parents=True, exist_ok=True)
        write_atomic(out_dir / REMOVED / "part-00001.parquet", sink.getvalue().to_pybytes())


def _compared(schema: pa.Schema) -> list[str]:
    return [f.name for f in schema if f.name not in _RUN_COLUMNS]


def row_digests(table: pa.Table, columns: Sequence[str]) -> list[bytes]:
    """A 16-byte BLAKE2b per row of `table` over `columns`' cells."""
    hashers = [hashlib.blake2b(digest_size=16) for _ in range(table.num_rows)]
    for name in columns:
        for hasher, cell in zip(hashers, _cells(table.column(name).combine_chunks()), strict=True):
            hasher.update(cell)
    return [h.digest() for h in hashers]


def _cells(column: pa.Array) -> Iterator[bytes]:
    """Each cell as bytes: a vector's raw float32s (no Python floats), else its JSON."""
    if pa.types.is_fixed_size_list(column.type) and column.null_count == 0:
        size = column.type.list_size
        flat = column.flatten()
        width = flat.type.byte_width
        data = memoryview(flat.buffers()[1])[flat.offset * width :]
        step = size * width
        for i in range(len(column)):
            yield b"v" + data[i * step : (i + 1) * step].tobytes()
        return
    for value in column.to_pylist():
        yield orjson.dumps(value) + b"\x00"
