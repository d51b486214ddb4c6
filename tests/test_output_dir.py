"""The output directory's guards: the run lock, one-line filesystem errors, damaged files
named with what to do, --restart that leaves no old part behind."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

import pytest
from test_checkpoint import failures, results

from batch.checkpoint import Checkpoint, read_status
from batch.errors import OutputError, OutputLocked
from batch.layout import RESULTS, clear_output
from batch.run_lock import LOCK, RunLock
from batch.storage import check_writable, describe


def open_checkpoint(out: Path, *, restart: bool = False) -> Checkpoint:
    return Checkpoint.open(
        out, kind="chat", input_path="jobs.jsonl", input_fingerprint="fp", settings={},
        total_jobs=10, restart=restart,
    )


def test_a_second_lock_is_refused_naming_the_holder(tmp_path: Path) -> None:
    held = RunLock.acquire(tmp_path / "out")
    with pytest.raises(OutputLocked) as refused:
        RunLock.acquire(tmp_path / "out")
    message = str(refused.value)
    assert f"pid {os.getpid()} on {socket.gethostname()}" in message
    assert "run started 20" in message and "another --out" in message
    held.release()
    RunLock.acquire(tmp_path / "out").release()


def test_a_lock_file_left_behind_does_not_block(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK).write_text('{"pid": 1, "host": "gone", "started_at": "then"}')
    RunLock.acquire(out).release()


def test_describe_names_the_path_the_errno_and_what_to_do(tmp_path: Path) -> None:
    full = OSError(errno.ENOSPC, "No space left on device")
    line = describe(full, "write", tmp_path / "part.parquet")
    assert line == (
        f"cannot write {tmp_path / 'part.parquet'}: No space left on device (ENOSPC); "
        "free some space or use another --out"
    )


def test_an_out_under_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    with pytest.raises(OutputError, match=r"cannot create .*plain/out: .*\(ENOTDIR\)"):
        check_writable(tmp_path / "plain" / "out")


def test_too_little_free_space_stops_before_anything_is_sent(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match=r"KiB free, a run needs at least .* \(ENOSPC\)"):
        check_writable(tmp_path, min_free=1 << 62)
    assert list(tmp_path.iterdir()) == []  # the probe is gone


def test_a_damaged_manifest_is_named_with_what_to_do(tmp_path: Path) -> None:
    open_checkpoint(tmp_path)
    (tmp_path / "manifest.json").write_bytes(b'{"format": 1, "kin')
    for opening in (lambda: open_checkpoint(tmp_path), lambda: read_status(tmp_path)):
        with pytest.raises(OutputError) as damaged:
            opening()
        message = str(damaged.value)
        assert str(tmp_path / "manifest.json") in message
        assert "delete it and run again" in message and "--restart" in message


def test_a_truncated_part_is_named_with_what_to_do(tmp_path: Path) -> None:
    cp = open_checkpoint(tmp_path)
    [info] = cp.commit(results("a", "b"), None, {})
    part = tmp_path / info.path
    part.write_bytes(part.read_bytes()[:40])
    for opening in (lambda: open_checkpoint(tmp_path), lambda: read_status(tmp_path)):
        with pytest.raises(OutputError) as damaged:
            opening()
        message = str(damaged.value)
        assert f"{part} is damaged" in message and "move it out of" in message


def test_restart_leaves_no_old_part_even_if_interrupted(tmp_path: Path) -> None:
    cp = open_checkpoint(tmp_path)
    cp.commit(results("a"), failures("b"), {})
    # A restart interrupted after its renames: the parts sit in the trash, not in results/.
    trash = tmp_path / ".trash"
    trash.mkdir()
    (tmp_path / RESULTS).replace(trash / "results-1")
    again = open_checkpoint(tmp_path, restart=True)
    assert len(again.done) == 0
    assert not trash.exists()
    assert (tmp_path / RESULTS).is_dir() and not list((tmp_path / RESULTS).iterdir())


def test_restart_that_cannot_delete_says_so_and_leaves_no_part_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cp = open_checkpoint(tmp_path)
    cp.commit(results("a"), None, {})

    def refuse(path: Path) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr("batch.layout.shutil.rmtree", refuse)
    with pytest.raises(OutputError, match=r"cannot clear .*\.trash: Permission denied"):
        clear_output(tmp_path)
    monkeypatch.undo()
    assert len(open_checkpoint(tmp_path).done) == 0
