"""Resilience end to end (the real CLI in a subprocess, the emulator over loopback): one run
per output directory, a full disk, signals during validation, a 413 bisection interrupted by
a 5xx, and a Retry-After over --max-retry-after."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from test_e2e_run import FAST, chat_jobs, emulator, gigabatch, ids, start

from batch.emulator import RunningEmulator, profile, serve_emulator
from batch.run_lock import RunLock

pytestmark = pytest.mark.e2e

EXIT_LOCKED = 5
__all__ = ["emulator"]  # the fixture, shared with test_e2e_run


def wait_for(condition: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not callable(condition) or not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def embed_jobs(path: Path, n: int, *, long_every: int = 0) -> set[str]:
    """`n` distinct short texts; every `long_every`-th is about 40 tokens long."""
    with path.open("w") as f:
        for i in range(n):
            text = f"text number {i}"
            if long_every and i % long_every == 0:
                text = " ".join(f"word{i}x{k}" for k in range(20))
            f.write(json.dumps({"id": f"e{i}", "text": text}) + "\n")
    return {f"e{i}" for i in range(n)}


def billed_rows(out: Path) -> int:
    files = sorted((out / "results").glob("part-*.parquet"))
    table = ds.dataset(files).to_table(columns=["prompt_tokens"])
    return int(sum(v or 0 for v in table.column("prompt_tokens").to_pylist()))


def chat_tokens(stats: dict[str, object]) -> int:
    tokens = stats["tokens"]
    assert isinstance(tokens, dict)
    return int(tokens["prompt"]) + int(tokens["completion"])


def test_a_second_run_on_the_same_out_is_refused_and_nothing_is_billed_twice(
    tmp_path: Path,
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    expected = chat_jobs(jobs, 240)
    out = tmp_path / "out"
    args = ("run", str(jobs), "--out", str(out), "-q", "--flush-interval", "0.1")
    # Two streams of 60 ms: the first run takes over 7 s, the second starts inside it.
    cfg = profile("b2b", stream_limit=2, **{**FAST, "latency_base_ms": 60.0})
    with serve_emulator(cfg) as emu:
        first = start(emu, *args)
        wait_for(lambda: (out / "results").is_dir())
        status, status_err = gigabatch(emu, "status", str(out))  # while the run holds it
        started = time.monotonic()
        code, err = gigabatch(emu, *args)
        refused_in = time.monotonic() - started
        _, first_err = first.communicate(timeout=120)
        stats = emu.stats()
    assert code == EXIT_LOCKED, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"pid {first.pid}" in lines[0] and "started" in lines[0], err
    assert refused_in < 10
    assert status == 0, status_err
    assert first.returncode == 0, first_err
    results = ids(out, "results")
    assert Counter(results) == Counter(expected)  # every id exactly once
    summary = json.loads((out / "summary.json").read_text())
    assert chat_tokens(stats) == summary["tokens"]["chat"]["prompt"] + (
        summary["tokens"]["chat"]["completion"]
    )


def test_a_lock_left_by_kill_9_does_not_block_the_next_run(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    expected = chat_jobs(jobs, 200)
    out = tmp_path / "out"
    args = ("run", str(jobs), "--out", str(out), "-q", "--flush-interval", "0.05")
    cfg = profile("b2b", stream_limit=4, **{**FAST, "latency_base_ms": 20.0})
    with serve_emulator(cfg) as emu:
        proc = start(emu, *args)
        wait_for(lambda: len(ids(out, "results")) > 0)
        proc.kill()
        proc.wait()
        assert (out / "gigabatch.lock").exists()
        code, err = gigabatch(emu, *args)
    assert code == 0, err
    assert Counter(ids(out, "results")) == Counter(expected)


def big_job_file(path: Path, n: int) -> None:
    with path.open("w") as f:
        for i in range(n):
            f.write(f'{{"id": "q{i}", "prompt": "question {i}"}}\n')


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_validation_exits_at_once_with_a_message_and_sends_nothing(
    emulator: RunningEmulator, tmp_path: Path, signum: int, code: int
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    big_job_file(jobs, 400_000)
    out = tmp_path / "out"
    proc = start(emulator, "run", str(jobs), "--out", str(out))
    wait_for(lambda: (out / "gigabatch.lock").exists() and (out / "gigabatch.lock").stat().st_size)
    time.sleep(0.3)  # validation of 400k lines takes seconds
    sent = time.monotonic()
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=30)
    took = time.monotonic() - sent
    assert proc.returncode == code, err
    assert "while validating; nothing was sent" in err and "Traceback" not in err
    assert not emulator.stats()["requests"].get("/api/v1/chat/completions")
    assert took < 1.5, f"exit took {took:.2f} s"  # 0.02-0.09 s measured, idle or with 2 CPU hogs


def test_sigterm_as_soon_as_the_output_is_locked_exits_with_the_message(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    big_job_file(jobs, 100_000)
    out = tmp_path / "out"
    lock = out / "gigabatch.lock"
    proc = start(emulator, "run", str(jobs), "--out", str(out))
    deadline = time.monotonic() + 20
    while not (lock.exists() and lock.stat().st_size):  # polled tightly: the signal comes
        assert time.monotonic() < deadline  # within a millisecond of the lock
        time.sleep(0.001)
    proc.send_signal(signal.SIGTERM)  # the handler is in place before the lock is taken
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert "while validating; nothing was sent" in err


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_the_start_up_check_exits_at_once_with_a_message(
    emulator: RunningEmulator, tmp_path: Path, signum: int, code: int
) -> None:
    jobs, out = tmp_path / "jobs.jsonl", tmp_path / "out"
    chat_jobs(jobs, 5)
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        auth = f"http://127.0.0.1:{silent.getsockname()[1]}/api/v2/oauth"
        proc = start(
            emulator, "run", str(jobs), "--out", str(out), env_overrides={"GIGACHAT_AUTH_URL": auth}
        )
        lock = out / "gigabatch.lock"
        wait_for(lambda: lock.exists() and lock.stat().st_size)
        time.sleep(1.0)  # 5 jobs validate at once: the run now waits on the token
        sent = time.monotonic()
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    assert proc.returncode == code, err
    assert "during the start-up check; no job was sent" in err and "Traceback" not in err
    assert took < 1.5
    assert not emulator.stats()["requests"].get("/api/v1/chat/completions")


def test_kill_9_during_validation_then_the_rerun_completes(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    big_job_file(jobs, 300_000)
    small = tmp_path / "small.jsonl"
    expected = chat_jobs(small, 50)
    out = tmp_path / "out"
    proc = start(emulator, "run", str(jobs), "--out", str(out))
    wait_for(lambda: (out / "gigabatch.lock").exists())
    time.sleep(0.3)
    proc.kill()
    proc.wait()
    code, err = gigabatch(emulator, "run", str(small), "--out", str(out), "-q")
    assert code == 0, err
    assert Counter(ids(out, "results")) == Counter(expected)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (needs root to mount; skipped otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> None:
    """Fill `disk` up to the last block."""
    with (disk / "filler").open("ab") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


def leftovers(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def run_onto_tiny_disk(
    emu: RunningEmulator, jobs: Path, out: Path, *extra: str
) -> tuple[subprocess.Popen[str], str]:
    """Start an embedding run into `out`; its first line on stderr (the disk's notice)."""
    args = ("run", str(jobs), "--kind", "embed", "--out", str(out), "-q", "--batch-size", "16")
    proc = start(emu, *args, *extra)
    assert proc.stderr is not None
    return proc, proc.stderr.readline()


def resume_exactly_once(emu: RunningEmulator, jobs: Path, out: Path, expected: set[str]) -> None:
    code, err = gigabatch(emu, "run", str(jobs), "--kind", "embed", "--out", str(out), "-q")
    assert code == 0, err
    assert Counter(ids(out, "results")) == Counter(expected)
    assert emu.stats()["tokens"]["embedding"] == billed_rows(out)


def test_a_full_disk_keeps_the_answered_rows_until_space_is_freed(
    tiny_disk: Path, tmp_path: Path
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    expected = embed_jobs(jobs, 6000)  # about 5 MB of parts: more than twice the disk
    (tiny_disk / "filler").write_bytes(b"\0" * 900 * 1024)  # ~1.1 MiB left: the run starts
    out = tiny_disk / "out"
    with serve_emulator(profile("b2b", stream_limit=4, **FAST)) as emu:
        # The first part (2,000 rows, about 1.8 MB) does not fit.
        proc, first = run_onto_tiny_disk(emu, jobs, out, "--flush-interval", "30")
        assert "No space left on device (ENOSPC)" in first, first
        assert str(out) in first
        subprocess.run(["mount", "-o", "remount,size=64m", str(tiny_disk)], check=True)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "every answered row is committed" in lines[0], err
        assert "Traceback" not in first + err
        assert leftovers(out) == []
        assert emu.stats()["tokens"]["embedding"] == billed_rows(out)  # none lost
        resume_exactly_once(emu, jobs, out, expected)


def test_a_disk_about_to_fill_stops_the_run_while_the_rows_still_fit(
    tiny_disk: Path, tmp_path: Path
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    expected = embed_jobs(jobs, 6000)
    out = tiny_disk / "out"
    with serve_emulator(profile("b2b", stream_limit=4, **FAST)) as emu:
        proc, first = run_onto_tiny_disk(emu, jobs, out, "--flush-interval", "0.2")
        assert "less than two parts" in first and str(out) in first, first
        # Room for what is still in flight, should a loaded machine let more in than two
        # parts' worth (the rows would then wait for room, not be lost).
        subprocess.run(["mount", "-o", "remount,size=64m", str(tiny_disk)], check=True)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, err
        assert "every answered row is committed" in err and "Traceback" not in err, err
        assert leftovers(out) == []
        assert emu.stats()["tokens"]["embedding"] == billed_rows(out)
        resume_exactly_once(emu, jobs, out, expected)


def test_a_run_on_a_full_disk_stops_before_sending_anything(
    tiny_disk: Path, tmp_path: Path, emulator: RunningEmulator
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    embed_jobs(jobs, 20)
    fill(tiny_disk)
    out = tiny_disk / "out"
    code, err = gigabatch(emulator, "run", str(jobs), "--kind", "embed", "--out", str(out))
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "(ENOSPC)" in lines[0] and str(tiny_disk) in lines[0], err
    assert emulator.stats()["requests"].get("/api/v1/embeddings") is None


@pytest.mark.parametrize(
    ("where", "expected"),
    [("readonly", "(EROFS)"), ("file", "(ENOTDIR)"), ("proc", "cannot create /proc/")],
)
def test_an_out_that_cannot_be_written_gives_one_line(
    emulator: RunningEmulator, tmp_path: Path, where: str, expected: str
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    chat_jobs(jobs, 3)
    if where == "readonly":
        if os.geteuid() != 0:
            pytest.skip("mounting needs root")
        mount = tmp_path / "ro"
        mount.mkdir()
        read_only = ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)]
        subprocess.run(read_only, check=True)
        out = mount / "out"
    elif where == "file":
        (tmp_path / "plain").write_text("not a directory")
        out = tmp_path / "plain" / "out"
    else:
        out = Path("/proc/gigabatch-out")
    try:
        code, err = gigabatch(emulator, "run", str(jobs), "--out", str(out))
    finally:
        if where == "readonly":
            subprocess.run(["umount", "-l", str(tmp_path / "ro")], check=False)
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], err
    assert emulator.stats()["requests"].get("/api/v1/chat/completions") is None


def test_a_413_bisection_cut_by_a_5xx_never_pays_twice_for_an_answer(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    expected = embed_jobs(jobs, 64, long_every=9)
    out = tmp_path / "out"
    # The server takes 12 tokens a text (the client assumes 512): every batch holds a long
    # text and is bisected, and one request in ten fails with a 500 somewhere in between.
    cfg = profile(
        "b2b", stream_limit=4, embedding_input_limit=12, fault_5xx=0.1, **{**FAST, "seed": 3}
    )
    with serve_emulator(cfg) as emu:
        code, err = gigabatch(
            emu, "run", str(jobs), "--kind", "embed", "--out", str(out), "--batch-size", "8",
            "--max-attempts", "20", "-q",
        )
        stats = emu.stats()
    assert code == 3, err  # the long texts failed as too large
    assert stats["faults"].get("5xx", 0) > 0
    failed = ids(out, "failed")
    assert set(failed) == {f"e{i}" for i in range(0, 64, 9)}
    assert Counter(ids(out, "results") + failed) == Counter(expected)
    summary = json.loads((out / "summary.json").read_text())
    billed = stats["tokens"]["embedding"]
    assert billed == billed_rows(out) == summary["tokens"]["embed"]["prompt"]


def test_a_retry_after_over_the_cap_stops_the_run_with_the_time_named(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    expected = chat_jobs(jobs, 40)
    out = tmp_path / "out"
    cfg = profile("b2b", stream_limit=1, retry_after_s=3600.0, **FAST)
    with serve_emulator(cfg) as emu:
        started = time.monotonic()
        code, err = gigabatch(
            emu, "run", str(jobs), "--out", str(out), "-q", "--max-retry-after", "60"
        )
        took = time.monotonic() - started
    assert code == 1, err
    assert "3600 s" in err and "--max-retry-after 60 s" in err, err
    assert took < 20
    done = ids(out, "results")
    assert len(done) == len(set(done)) and set(done) <= expected


def test_estimate_sample_into_an_out_held_by_a_run_is_refused(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    chat_jobs(jobs, 20)
    out = tmp_path / "out"
    held = RunLock.acquire(out)
    try:
        code, err = gigabatch(
            emulator, "estimate", str(jobs), "--sample", "3", "--out", str(out)
        )
    finally:
        held.release()
    assert code == EXIT_LOCKED, err
    assert f"pid {os.getpid()}" in err
    requests = emulator.stats()["requests"]
    assert not requests.get("/api/v1/chat/completions") and not requests.get("/api/v1/tokens/count")
