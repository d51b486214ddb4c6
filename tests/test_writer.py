"""PartWriter: one task turns outcomes into committed parts, by time and by size."""

from __future__ import annotations

import errno
from collections.abc import Mapping
from pathlib import Path

import anyio
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.api_types import Usage
from batch.checkpoint import Checkpoint, PartInfo
from batch.errors import OutputError
from batch.writer import Outcomes, PartWriter

SCHEMA = pa.schema([("id", pa.string()), ("answer", pa.string()), ("attempts", pa.int32())])


def checkpoint(out: Path) -> Checkpoint:
    return Checkpoint.open(
        out,
        kind="fake",
        input_path="x",
        input_fingerprint="f",
        settings={},
        total_jobs=100,
    )


def outcome(i: int) -> Outcomes:
    return Outcomes(
        results=[{"id": f"r{i}", "answer": "ok", "attempts": 1}],
        failures=[{"id": f"f{i}", "error_class": "BadRequest", "status": 400, "attempts": 2}],
        usage={"M": Usage(2, 1)},
    )


def test_commits_a_part_when_the_row_limit_is_reached(tmp_path: Path) -> None:
    cp = checkpoint(tmp_path)

    async def main() -> int:
        committed = anyio.Event()
        writer = PartWriter(
            cp, SCHEMA, flush_interval=60, flush_rows=4, on_commit=lambda _: committed.set()
        )
        send, receive = anyio.create_memory_object_stream[Outcomes](10)
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer.run, receive)
            async with send:
                for i in range(2):  # 4 rows: one commit before the stream closes
                    await send.send(outcome(i))
                with anyio.fail_after(5):
                    await committed.wait()
                parts = writer.parts_committed
        return parts

    assert anyio.run(main) == 2  # a results part and a failed part
    assert pq.read_table(tmp_path / "results" / "part-00001.parquet").num_rows == 2


def test_commits_on_the_flush_interval_without_more_rows(tmp_path: Path) -> None:
    cp = checkpoint(tmp_path)

    async def main() -> None:
        committed = anyio.Event()
        writer = PartWriter(
            cp, SCHEMA, flush_interval=0.05, flush_rows=1000, on_commit=lambda _: committed.set()
        )
        send, receive = anyio.create_memory_object_stream[Outcomes](10)
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer.run, receive)
            async with send:
                await send.send(outcome(0))
                with anyio.fail_after(5):
                    await committed.wait()

    anyio.run(main)
    assert list((tmp_path / "results").glob("part-*.parquet"))


def test_commits_the_rest_when_the_stream_closes(tmp_path: Path) -> None:
    cp = checkpoint(tmp_path)
    writer = PartWriter(cp, SCHEMA, flush_interval=60, flush_rows=1000)

    async def main() -> None:
        send, receive = anyio.create_memory_object_stream[Outcomes](10)
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer.run, receive)
            async with send:
                for i in range(3):
                    await send.send(outcome(i))

    anyio.run(main)
    table = pq.read_table(tmp_path / "results")
    assert sorted(table.column("id").to_pylist()) == ["r0", "r1", "r2"]
    assert cp.totals.usage == {"M": Usage(6, 3)}


def test_parts_are_zstd_compressed_with_usage_in_the_footer(tmp_path: Path) -> None:
    cp = checkpoint(tmp_path)
    writer = PartWriter(cp, SCHEMA)
    writer.add(outcome(0))
    anyio.run(writer.flush)
    meta = pq.read_metadata(tmp_path / "results" / "part-00001.parquet")
    assert meta.row_group(0).column(0).compression == "ZSTD"
    assert b"gigabatch.usage" in (meta.metadata or {})
    failed = pq.read_table(tmp_path / "failed" / "part-00002.parquet").to_pylist()
    assert failed[0]["error_class"] == "BadRequest" and failed[0]["attempts"] == 2


def test_a_run_without_failures_still_leaves_a_readable_empty_failed_dataset(
    tmp_path: Path,
) -> None:
    import duckdb
    import pyarrow.dataset as ds

    from batch.checkpoint import FAILED_SCHEMA

    cp = checkpoint(tmp_path)

    async def main() -> None:
        writer = PartWriter(cp, SCHEMA, flush_interval=60)
        send, receive = anyio.create_memory_object_stream[Outcomes](10)
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer.run, receive)
            async with send:
                await send.send(Outcomes(results=[{"id": "a", "answer": "ok", "attempts": 1}]))

    anyio.run(main)
    failed = ds.dataset(tmp_path / "failed")
    assert failed.schema.names == FAILED_SCHEMA.names
    assert failed.count_rows() == 0
    glob = str(tmp_path / "failed" / "*.parquet")
    assert duckdb.sql(f"select count(*) from '{glob}'").fetchall() == [(0,)]
    assert ds.dataset(tmp_path / "results").count_rows() == 1


def test_a_resumed_run_keeps_one_empty_part_at_most(tmp_path: Path) -> None:
    async def one_run() -> None:
        writer = PartWriter(checkpoint(tmp_path), SCHEMA, flush_interval=60)
        send, receive = anyio.create_memory_object_stream[Outcomes](1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer.run, receive)
            await send.aclose()

    anyio.run(one_run)
    anyio.run(one_run)
    assert len(list((tmp_path / "failed").glob("part-*.parquet"))) == 1
    assert len(list((tmp_path / "results").glob("part-*.parquet"))) == 1


def test_a_row_key_that_is_not_a_column_is_an_error_not_a_dropped_value() -> None:
    from batch.writer import rows_to_table

    with pytest.raises(ValueError, match=r"row keys \['answr'\] are not columns"):
        rows_to_table([{"id": "a", "answr": "typo"}], SCHEMA)


class FullDisk(Checkpoint):
    """A checkpoint on a disk that is full for the subdirectories in `full`."""

    full: set[str]
    tries: int

    def commit_part(self, sub: str, table: pa.Table, usage: Mapping[str, Usage]) -> PartInfo:
        self.tries = getattr(self, "tries", 0) + 1
        if sub in getattr(self, "full", set()):
            raise OSError(errno.ENOSPC, "No space left on device", str(self.out_dir / sub))
        return super().commit_part(sub, table, usage)


def full_disk(out: Path, *full: str) -> FullDisk:
    cp = FullDisk.open(
        out, kind="fake", input_path="x", input_fingerprint="f", settings={}, total_jobs=9
    )
    assert isinstance(cp, FullDisk)
    cp.full = set(full)
    return cp


def run_writer(
    writer: PartWriter, outcomes: list[Outcomes], *, free_after: float | None
) -> None:
    """Write `outcomes`; the disk is freed `free_after` seconds after the stream closes
    (never with None)."""

    async def main() -> None:
        send, receive = anyio.create_memory_object_stream[Outcomes](10)
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer.run, receive)
            async with send:
                for item in outcomes:
                    await send.send(item)
            if free_after is None:
                return
            await anyio.sleep(free_after)
            assert isinstance(writer.checkpoint, FullDisk)
            writer.checkpoint.full = set()

    anyio.run(main)


def written_ids(out: Path, sub: str) -> list[str]:
    return sorted(pq.read_table(out / sub).column("id").to_pylist())


def test_a_full_disk_keeps_the_rows_and_commits_them_once_space_is_freed(tmp_path: Path) -> None:
    cp = full_disk(tmp_path, "results", "failed")
    errors: list[OutputError] = []
    writer = PartWriter(
        cp, SCHEMA, flush_interval=0.01, retry_interval=0.01, disk_wait=5, on_error=errors.append
    )
    run_writer(writer, [outcome(i) for i in range(3)], free_after=0.2)
    assert len(errors) == 1 and "(ENOSPC)" in str(errors[0])
    assert cp.tries > 2  # retried while full
    assert written_ids(tmp_path, "results") == ["r0", "r1", "r2"]
    assert written_ids(tmp_path, "failed") == ["f0", "f1", "f2"]
    final = writer.outcome()
    assert final is not None and "every answered row is committed" in str(final)
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_part_committed_before_the_disk_filled_is_not_written_again(tmp_path: Path) -> None:
    cp = full_disk(tmp_path, "failed")
    writer = PartWriter(cp, SCHEMA, flush_interval=0.01, retry_interval=0.01, disk_wait=5)
    run_writer(writer, [outcome(0)], free_after=0.1)
    assert written_ids(tmp_path, "results") == ["r0"]
    assert written_ids(tmp_path, "failed") == ["f0"]


def test_rows_that_never_find_space_are_reported_as_lost(tmp_path: Path) -> None:
    cp = full_disk(tmp_path, "results", "failed")
    writer = PartWriter(cp, SCHEMA, flush_interval=0.01, retry_interval=0.01, disk_wait=0.05)
    run_writer(writer, [outcome(0)], free_after=None)
    final = writer.outcome()
    assert final is not None and "2 answered rows could not be committed" in str(final)


def test_a_disk_about_to_fill_stops_the_run_while_the_rows_still_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("batch.part_store.free_bytes", lambda _: 1024)
    errors: list[OutputError] = []
    writer = PartWriter(
        checkpoint(tmp_path), SCHEMA, flush_interval=0.01, flush_rows=2, on_error=errors.append
    )
    run_writer(writer, [outcome(i) for i in range(3)], free_after=None)
    assert len(errors) == 1 and "only 1 KiB left, less than two parts" in str(errors[0])
    assert written_ids(tmp_path, "results") == ["r0", "r1", "r2"]
    final = writer.outcome()
    assert final is not None and "every answered row is committed" in str(final)


def test_plenty_of_room_does_not_stop_anything(tmp_path: Path) -> None:
    errors: list[OutputError] = []
    writer = PartWriter(checkpoint(tmp_path), SCHEMA, flush_interval=0.01, on_error=errors.append)
    run_writer(writer, [outcome(i) for i in range(3)], free_after=None)
    assert errors == [] and writer.outcome() is None
