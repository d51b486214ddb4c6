"""Inputs end to end: the real CLI in a subprocess, fed from a pipe, a moved copy, oversized
requests, against the emulator on loopback (whose stats prove what was sent)."""

from __future__ import annotations

import gzip
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from batch.emulator import RunningEmulator, profile, serve_emulator

pytestmark = pytest.mark.e2e

FAST = {"latency_base_ms": 2.0, "answer_tokens_min": 2, "answer_tokens_max": 4, "seed": 3}
CHAT_PATH = "/api/v1/chat/completions"
CLI = [sys.executable, "-c", "from batch.cli import main; main()"]


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    with serve_emulator(profile("b2b", **FAST)) as emu:
        yield emu


def _env(emu: RunningEmulator) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIGACHAT_")}
    env.update(
        GIGACHAT_BASE_URL=emu.base_url,
        GIGACHAT_AUTH_URL=emu.auth_url,
        GIGACHAT_CREDENTIALS=emu.credentials,
        GIGACHAT_SCOPE=emu.scope,
    )
    return env


def gigabatch(emu: RunningEmulator, *args: str) -> tuple[int, str, str]:
    proc = subprocess.run([*CLI, *args], env=_env(emu), capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def piped(emu: RunningEmulator, source: Path, *args: str) -> tuple[int, str, str]:
    """`cat SOURCE | gigabatch ARGS` through a real shell pipe (not a file on stdin)."""
    command = f"cat {shlex.quote(str(source))} | {shlex.join([*CLI, *args])}"
    proc = subprocess.run(
        ["/bin/sh", "-c", command], env=_env(emu), capture_output=True, text=True, timeout=120
    )
    return proc.returncode, proc.stdout, proc.stderr


def chat_jobs(path: Path, n: int) -> set[str]:
    path.write_text(
        "".join(json.dumps({"id": f"q{i}", "prompt": f"question {i}"}) + "\n" for i in range(n))
    )
    return {f"q{i}" for i in range(n)}


def ids(out: Path) -> list[str]:
    return list(ds.dataset(out / "results").to_table(columns=["id"]).column("id").to_pylist())


def sent(emu: RunningEmulator) -> int:
    requests = emu.stats(arrivals=False)["requests"].get(CHAT_PATH, {})
    return sum(requests.values())


@pytest.mark.parametrize("target", ["-", "/dev/stdin"])
def test_piped_jobs_are_spooled_run_and_resumed(
    emulator: RunningEmulator, tmp_path: Path, target: str
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    expected = chat_jobs(jobs, 12)
    out = tmp_path / "out"
    code, _, err = piped(emulator, jobs, "run", target, "--out", str(out), "-q")
    assert code == 0, err
    assert sorted(ids(out)) == sorted(expected)
    spool = out / "input" / "stdin.jsonl"
    assert spool.read_bytes() == jobs.read_bytes()
    assert sent(emulator) == 12
    # The same pipe again resumes (nothing to send); so does the spool given as a file.
    code, _, err = piped(emulator, jobs, "run", target, "--out", str(out), "-q")
    assert code == 0, err
    code, _, err = gigabatch(emulator, "run", str(spool), "--out", str(out), "-q")
    assert code == 0, err
    assert sent(emulator) == 12
    assert sorted(ids(out)) == sorted(expected)


def test_piped_gzip_is_read_and_validated(emulator: RunningEmulator, tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    chat_jobs(jobs, 5)
    packed = tmp_path / "jobs.jsonl.gz"
    packed.write_bytes(gzip.compress(jobs.read_bytes()))
    code, stdout, err = piped(emulator, packed, "validate", "-")
    assert code == 0, err
    assert "5 records, 5 jobs, valid" in stdout
    out = tmp_path / "out"
    code, _, err = piped(emulator, packed, "run", "-", "--out", str(out), "-q")
    assert code == 0, err
    assert (out / "input" / "stdin.jsonl.gz").exists()
    assert len(ids(out)) == 5


def test_empty_standard_input_is_refused_not_a_silent_success(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    proc = subprocess.run(
        [*CLI, "run", "-", "--out", str(tmp_path / "out")],
        env=_env(emulator),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "standard input is empty" in proc.stderr


def test_a_moved_copy_of_the_input_resumes_and_a_changed_byte_is_refused(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    jobs = tmp_path / "a" / "jobs.jsonl"
    jobs.parent.mkdir()
    chat_jobs(jobs, 6)
    out = tmp_path / "out"
    code, _, err = gigabatch(emulator, "run", str(jobs), "--out", str(out), "-q")
    assert code == 0, err
    moved = tmp_path / "b" / "renamed.jsonl"
    moved.parent.mkdir()
    shutil.copy(jobs, moved)
    code, _, err = gigabatch(emulator, "run", str(moved), "--out", str(out), "-q")
    assert code == 0, err
    assert sent(emulator) == 6
    moved.write_bytes(moved.read_bytes().replace(b"question 3", b"question 4"))
    code, _, err = gigabatch(emulator, "run", str(moved), "--out", str(out), "-q")
    assert code == 2
    assert "input file changed" in err
    assert sent(emulator) == 6


def test_directory_of_jsonl_and_parquet_runs_every_file(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    folder = tmp_path / "jobs"
    folder.mkdir()
    chat_jobs(folder / "a.jsonl", 3)
    samples = Path(__file__).resolve().parent.parent / "sample_jobs"
    shutil.copy(samples / "chat.parquet", folder / "b.parquet")
    out = tmp_path / "out"
    code, _, err = gigabatch(emulator, "run", str(folder), "--out", str(out), "-q")
    assert code == 0, err
    parquet_ids = ds.dataset(samples / "chat.parquet").to_table().column("id").to_pylist()
    assert len(ids(out)) == 3 + len(parquet_ids)


def test_oversized_requests_are_refused_at_validation_and_nothing_is_sent(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    with jobs.open("w") as f:
        f.write(json.dumps({"id": "fine", "prompt": "hello"}) + "\n")
        f.write(json.dumps({"id": "context", "prompt": "word " * 1_000_000}) + "\n")
        f.write(json.dumps({"id": "bytes", "prompt": "x" * (21 * 1024 * 1024)}) + "\n")
    code, _, err = gigabatch(emulator, "run", str(jobs), "--out", str(tmp_path / "out"))
    assert code == 2
    assert "line 2: at least 62500 tokens by length alone" in err
    assert sent(emulator) == 0
    code, stdout, _ = gigabatch(emulator, "validate", str(jobs))
    assert code == 2
    assert f"{jobs} line 3: the line is over 20.0 MB" in stdout
    assert sent(emulator) == 0

    embed = tmp_path / "embed.jsonl"
    embed.write_text(json.dumps({"id": "long", "text": "z" * 40_000}) + "\n")
    code, _, err = gigabatch(
        emulator, "run", str(embed), "--kind", "embed", "--out", str(tmp_path / "e")
    )
    assert code == 2
    assert "over the 512-token input limit of Embeddings" in err
    assert emulator.stats(arrivals=False)["requests"].get("/api/v1/tokens/count") is None
    assert emulator.stats(arrivals=False)["requests"].get("/api/v1/embeddings") is None


def test_validate_refuses_a_50_mb_line_with_a_clear_message(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    with jobs.open("wb") as f:
        f.write(b'{"id": "big", "prompt": "')
        for _ in range(50):
            f.write(b"w" * (1024 * 1024))
        f.write(b'"}\n')
    code, stdout, _ = gigabatch(emulator, "validate", str(jobs))
    assert code == 2
    assert stdout.splitlines() == [
        f"{jobs} line 1: the line is over 20.0 MB, the API's request limit, so it can never "
        "be sent: split or shorten it",
        f"{jobs}: 1 records, 0 jobs, INVALID: 1 problem(s)",
    ]
