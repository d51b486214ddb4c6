"""The single writer task: rows from every worker go through one stream into Parquet parts.

It buffers rows and commits a part every `flush_interval` seconds or `flush_rows` rows,
whichever comes first, so a crash loses at most a flush interval of answers. The commit
itself (Arrow conversion, Parquet with zstd, fsync, rename) runs in a worker thread so the
event loop keeps sending requests meanwhile.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import pyarrow as pa
from anyio.abc import ObjectReceiveStream

from batch.api_types import Usage
from batch.checkpoint import FAILED_SCHEMA, Checkpoint, PartInfo


@dataclass(slots=True)
class Outcomes:
    """What one batch produced: result rows, failed rows, and the billed usage by model."""

    results: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, Usage] = field(default_factory=dict)


def rows_to_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows as a table of `schema`, column by column. Vectors that arrive as `array('f')`
    are copied as one buffer: converting them float by float costs about 25 times more."""
    columns = [_column([row.get(f.name) for row in rows], f.type) for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def _column(values: list[Any], type_: pa.DataType) -> pa.Array:
    if (
        pa.types.is_fixed_size_list(type_)
        and type_.value_type == pa.float32()
        and all(
            isinstance(v, array) and v.typecode == "f" and len(v) == type_.list_size
            for v in values
        )
    ):
        data = b"".join(v.tobytes() for v in values)
        flat = pa.Array.from_buffers(pa.float32(), len(data) // 4, [None, pa.py_buffer(data)])
        return pa.FixedSizeListArray.from_arrays(flat, type=type_)
    return pa.array(values, type=type_)


class PartWriter:
    """Buffers outcomes and commits them through the checkpoint; `run` is the writer task."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        result_schema: pa.Schema,
        *,
        flush_interval: float = 2.0,
        flush_rows: int = 5000,
        on_commit: Callable[[list[PartInfo]], None] | None = None,
        failed_schema: pa.Schema = FAILED_SCHEMA,
    ) -> None:
        self.checkpoint = checkpoint
        self.result_schema = result_schema
        self.failed_schema = failed_schema
        self.flush_interval = flush_interval
        self.flush_rows = flush_rows
        self.on_commit = on_commit
        self._results: list[dict[str, Any]] = []
        self._failures: list[dict[str, Any]] = []
        self._usage: dict[str, Usage] = {}
        self.parts_committed = 0

    @property
    def buffered(self) -> int:
        return len(self._results) + len(self._failures)

    def add(self, outcomes: Outcomes) -> None:
        self._results.extend(outcomes.results)
        self._failures.extend(outcomes.failures)
        for model, usage in outcomes.usage.items():
            self._usage[model] = self._usage.get(model, Usage()) + usage

    async def flush(self) -> None:
        """Commit everything buffered (nothing happens when the buffer is empty). The commit
        is shielded: once started, a part is finished even if the run is being cancelled."""
        if not self.buffered:
            return
        results, failures, usage = self._results, self._failures, self._usage
        self._results, self._failures, self._usage = [], [], {}
        with anyio.CancelScope(shield=True):
            committed = await anyio.to_thread.run_sync(
                self._commit, results, failures, usage
            )
        self.parts_committed += len(committed)
        if self.on_commit is not None:
            self.on_commit(committed)

    def _commit(
        self,
        results: list[dict[str, Any]],
        failures: list[dict[str, Any]],
        usage: dict[str, Usage],
    ) -> list[PartInfo]:
        result_table = rows_to_table(results, self.result_schema) if results else None
        failed_table = rows_to_table(failures, self.failed_schema) if failures else None
        return self.checkpoint.commit(result_table, failed_table, usage)

    async def run(self, receive: ObjectReceiveStream[Outcomes]) -> None:
        """Take outcomes until the stream closes, committing on time or size; then commit
        the rest."""
        deadline = time.monotonic() + self.flush_interval
        async with receive:
            while True:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    await self.flush()
                    deadline = time.monotonic() + self.flush_interval
                    continue
                with anyio.move_on_after(timeout):
                    try:
                        outcomes = await receive.receive()
                    except anyio.EndOfStream:
                        break
                    self.add(outcomes)
                    if self.buffered >= self.flush_rows:
                        await self.flush()
                        deadline = time.monotonic() + self.flush_interval
        await self.flush()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(
                self.checkpoint.ensure_datasets, self.result_schema, self.failed_schema
            )
