"""The output directory as a checkpoint: done ids, fingerprints, retry-failed, restart."""

from __future__ import annotations

import json
import re
import tracemalloc
from array import array
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from batch.api_types import Usage
from batch.checkpoint import FAILED_SCHEMA, Checkpoint, DoneIds, read_status
from batch.errors import RunRefused
from batch.id_hashes import id_hash

SCHEMA = pa.schema([("id", pa.string()), ("answer", pa.string())])


def open_cp(out: Path, **kw: Any) -> Checkpoint:
    args: dict[str, Any] = {
        "kind": "chat",
        "input_path": "jobs.jsonl",
        "input_fingerprint": "blake2b:aaaa",
        "settings": {"model": "GigaChat"},
        "total_jobs": 10,
    }
    args.update(kw)
    return Checkpoint.open(out, **args)


def results(*ids: str) -> pa.Table:
    return pa.Table.from_pylist([{"id": i, "answer": "x"} for i in ids], schema=SCHEMA)


def failures(*ids: str) -> pa.Table:
    return pa.Table.from_pylist(
        [{"id": i, "error_class": "BadRequest", "attempts": 1} for i in ids], schema=FAILED_SCHEMA
    )


def test_resume_sees_ids_of_results_and_failed_parts_as_done(tmp_path: Path) -> None:
    cp = open_cp(tmp_path)
    cp.commit(results("a", "b"), failures("c"), {"GigaChat:2": Usage(10, 5)})
    again = open_cp(tmp_path)
    assert {"a", "b", "c"} <= {i for i in "abcd" if i in again.done}
    assert "d" not in again.done
    assert again.totals.succeeded == 2 and again.totals.failed == 1
    assert again.totals.usage == {"GigaChat:2": Usage(10, 5)}


def test_parts_are_numbered_on_from_the_highest_existing(tmp_path: Path) -> None:
    cp = open_cp(tmp_path)
    cp.commit(results("a"), failures("b"), {})
    again = open_cp(tmp_path)
    [info] = again.commit(results("c"), None, {})
    assert info.path == "results/part-00003.parquet"


def test_leftover_temp_files_are_removed_and_not_read(tmp_path: Path) -> None:
    open_cp(tmp_path)
    (tmp_path / "results" / ".part-00001.parquet.tmp").write_bytes(b"half a file")
    cp = open_cp(tmp_path)
    assert len(cp.done) == 0
    assert not list((tmp_path / "results").glob(".*"))


def test_part_missing_from_the_manifest_still_counts(tmp_path: Path) -> None:
    cp = open_cp(tmp_path)
    cp.commit(results("a"), None, {"M": Usage(1, 2)})
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["parts"] = []  # as after a crash between the rename and the manifest write
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    again = open_cp(tmp_path)
    assert "a" in again.done and again.totals.usage == {"M": Usage(1, 2)}


def test_changed_input_refused_with_what_changed(tmp_path: Path) -> None:
    open_cp(tmp_path)
    with pytest.raises(RunRefused, match="input file changed"):
        open_cp(tmp_path, input_fingerprint="blake2b:bbbb")


def test_changed_setting_refused_naming_the_setting(tmp_path: Path) -> None:
    open_cp(tmp_path)
    with pytest.raises(RunRefused, match=re.escape("temperature: None -> 0.5")):
        open_cp(tmp_path, settings={"model": "GigaChat", "temperature": 0.5})


def test_restart_deletes_the_previous_run(tmp_path: Path) -> None:
    cp = open_cp(tmp_path)
    cp.commit(results("a"), failures("b"), {})
    again = open_cp(tmp_path, input_fingerprint="blake2b:bbbb", restart=True)
    assert len(again.done) == 0
    assert not list((tmp_path / "results").glob("*.parquet"))


def test_retry_failed_moves_failed_parts_aside(tmp_path: Path) -> None:
    cp = open_cp(tmp_path)
    cp.commit(results("a"), failures("b"), {})
    again = open_cp(tmp_path, retry_failed=True)
    assert "a" in again.done and "b" not in again.done
    assert list((tmp_path / "superseded" / "failed-1").glob("part-*.parquet"))
    assert not list((tmp_path / "failed").glob("*.parquet"))
    again.commit(None, failures("b"), {})
    third = open_cp(tmp_path, retry_failed=True)
    assert (tmp_path / "superseded" / "failed-2").is_dir() and "b" not in third.done


def test_status_rebuilds_totals_from_the_parts(tmp_path: Path) -> None:
    cp = open_cp(tmp_path)
    cp.commit(results("a", "b"), failures("c"), {"GigaChat": Usage(7, 3, 1)})
    manifest, totals = read_status(tmp_path)
    assert manifest["total_jobs"] == 10
    assert (totals.succeeded, totals.failed) == (2, 1)
    assert totals.tokens == Usage(7, 3, 1)


def test_done_ids_cost_about_8_bytes_each() -> None:
    hashes = array("Q", (id_hash(f"job-{i}") for i in range(200_000)))
    tracemalloc.start()
    done = DoneIds.from_hashes(hashes)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(done) == 200_000
    assert peak < 200_000 * 8 * 4  # the sorted copy plus transient Arrow buffers
    assert "job-123" in done and "job-x" not in done
