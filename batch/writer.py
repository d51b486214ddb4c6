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
from batch.errors import OutputError
from batch.layout import FAILED, RESULTS
from batch.storage import describe, is_disk_full


@dataclass(slots=True)
class Outcomes:
    """What one batch produced: result rows, failed rows, and the billed usage by model.
    `tables` holds result rows already in columns of the result schema (cache hits)."""

    results: list[dict[str, Any]] = field(default_factory=list)
    tables: list[pa.Table] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, Usage] = field(default_factory=dict)
    unknown_usage: int = 0  # answers whose usage the API did not say in a readable form

    @property
    def result_count(self) -> int:
        rows: int = sum(table.num_rows for table in self.tables)
        return len(self.results) + rows


def rows_to_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows as a table of `schema`, column by column. Vectors that arrive as `array('f')`
    are copied as one buffer: converting them float by float costs about 25 times more.
    A row key that is not a column is an error, never a value silently dropped."""
    extra = set().union(*rows) - set(schema.names)  # ~0.3 us a row
    if extra:
        raise ValueError(
            f"row keys {sorted(extra)} are not columns of the schema {schema.names}"
        )
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
    """Buffers outcomes and commits them through the checkpoint; `run` is the writer task.

    Rows leave the buffer only once their part is committed. When less room is left than
    two of the largest parts so far, `on_error` hears it (the run stops sending while the
    answered rows still fit). When a commit fails all the same, `on_error` hears it (once
    in all), the rows stay buffered, and the commit is tried again every `retry_interval`
    seconds; on a full disk, for `disk_wait` seconds after the last worker is done:
    freeing space then loses nothing."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        result_schema: pa.Schema,
        *,
        flush_interval: float = 2.0,
        flush_rows: int = 5000,
        on_commit: Callable[[list[PartInfo]], None] | None = None,
        on_error: Callable[[OutputError], None] | None = None,
        retry_interval: float = 1.0,
        disk_wait: float = 600.0,
        failed_schema: pa.Schema = FAILED_SCHEMA,
    ) -> None:
        self.checkpoint = checkpoint
        self.result_schema = result_schema
        self.failed_schema = failed_schema
        self.flush_interval = flush_interval
        self.flush_rows = flush_rows
        self.on_commit = on_commit
        self.on_error = on_error
        self.retry_interval = retry_interval
        self.disk_wait = disk_wait
        self._results: list[dict[str, Any]] = []
        self._tables: list[pa.Table] = []
        self._table_rows = 0
        self._failures: list[dict[str, Any]] = []
        self._usage: dict[str, Usage] = {}
        self._manifest_stale = False
        self.parts_committed = 0
        self.error: OutputError | None = None
        self._space_may_come = False
        self._failing = False  # a commit has failed (and was reported)
        self._largest_part = 0
        self._free = -1  # bytes left after the last commit; -1 before any

    @property
    def buffered(self) -> int:
        return len(self._results) + self._table_rows + len(self._failures)

    def add(self, outcomes: Outcomes) -> None:
        self._results.extend(outcomes.results)
        self._tables.extend(outcomes.tables)
        self._table_rows += sum(table.num_rows for table in outcomes.tables)
        self._failures.extend(outcomes.failures)
        for model, usage in outcomes.usage.items():
            self._usage[model] = self._usage.get(model, Usage()) + usage

    async def flush(self) -> bool:
        """Commit everything buffered; True when nothing is left uncommitted. The commit is
        shielded: once started, a part is finished even if the run is being cancelled."""
        if not self.buffered and not self._manifest_stale:
            return True
        committed: list[PartInfo] = []
        with anyio.CancelScope(shield=True):
            try:
                await anyio.to_thread.run_sync(self._commit, committed)
            except OSError as exc:
                self._failed(exc)
        self.parts_committed += len(committed)
        if committed and self.on_commit is not None:
            self.on_commit(committed)
        if 0 <= self._free < 2 * self._largest_part:
            self._low_space(
                OutputError(
                    f"cannot keep writing {self.checkpoint.out_dir}: only "
                    f"{self._free // 1024} KiB left, less than two parts of "
                    f"{self._largest_part // 1024} KiB (ENOSPC ahead); free some space or "
                    "use another --out"
                )
            )
        return not self.buffered and not self._manifest_stale

    def _failed(self, exc: OSError) -> None:
        """A commit failed: reported once, even after an early stop for space (so the
        user hears that rows now wait for room)."""
        if self._failing:
            return
        self._failing = True
        self._space_may_come = is_disk_full(exc)
        error = OutputError(describe(exc))
        self.error = self.error or error
        self._report(error)

    def _low_space(self, error: OutputError) -> None:
        if self.error is None:
            self.error = error
            self._report(error)

    def _report(self, error: OutputError) -> None:
        if self.on_error is not None:
            self.on_error(error)

    def outcome(self) -> OutputError | None:
        """After `run`: the first commit error, saying whether every answered row was
        committed in the end or how many could not be."""
        if self.error is None:
            return None
        lost = self.buffered + self.checkpoint.unrecorded_rows
        if lost:
            return OutputError(
                f"{self.error}; {lost} answered rows could not be committed in "
                f"{self.disk_wait:.0f} s and are lost"
            )
        return OutputError(
            f"{self.error}; every answered row is committed: run again to continue"
        )

    def _commit(self, committed: list[PartInfo]) -> None:
        """In a thread: each table is one part; its rows leave the buffer only once their
        part is committed, so a failure (raised) leaves the rest buffered for a retry."""
        checkpoint = self.checkpoint
        if self._results or self._tables:
            tables = self._tables
            if self._results:
                tables = [rows_to_table(self._results, self.result_schema), *tables]
            table = pa.concat_tables(tables)
            committed.append(checkpoint.commit_part(RESULTS, table, self._usage))
            self._results, self._tables, self._table_rows, self._usage = [], [], 0, {}
            self._manifest_stale = True
        if self._failures:
            table = rows_to_table(self._failures, self.failed_schema)
            committed.append(checkpoint.commit_part(FAILED, table, {}))
            self._failures = []
            self._manifest_stale = True
        if self._manifest_stale:
            checkpoint.write_manifest()
            self._manifest_stale = False
        for info in committed:
            self._largest_part = max(self._largest_part, info.size)
        if committed:
            self._free = checkpoint.free_bytes()

    async def run(self, receive: ObjectReceiveStream[Outcomes]) -> None:
        """Take outcomes until the stream closes, committing on time or size (while commits
        fail, on time only); then commit the rest, waiting for space if need be."""
        deadline = time.monotonic() + self.flush_interval
        async with receive:
            while True:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    await self.flush()
                    deadline = time.monotonic() + self._interval()
                    continue
                with anyio.move_on_after(timeout):
                    try:
                        outcomes = await receive.receive()
                    except anyio.EndOfStream:
                        break
                    self.add(outcomes)
                    if self.buffered >= self.flush_rows and self.error is None:
                        await self.flush()
                        deadline = time.monotonic() + self._interval()
        await self._final_flush()

    def _interval(self) -> float:
        return self.flush_interval if self.error is None else self.retry_interval

    async def _final_flush(self) -> None:
        waited_until = time.monotonic() + self.disk_wait
        with anyio.CancelScope(shield=True):
            while not await self.flush():
                if not self._space_may_come or time.monotonic() >= waited_until:
                    return
                await anyio.sleep(self.retry_interval)
            try:
                await anyio.to_thread.run_sync(
                    self.checkpoint.ensure_datasets, self.result_schema, self.failed_schema
                )
            except OSError as exc:
                self._failed(exc)
