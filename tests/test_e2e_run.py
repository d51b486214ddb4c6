"""`gigabatch run` end to end: the real CLI in a subprocess against the emulator on loopback."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd  # type: ignore[import-untyped]
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from batch.emulator import RunningEmulator, profile, serve_emulator

pytestmark = pytest.mark.e2e

SAMPLES = Path(__file__).resolve().parent.parent / "sample_jobs"
# Fast answers: a few ms each, short chat answers.
FAST = {
    "latency_base_ms": 3.0,
    "latency_per_prompt_token_ms": 0.0,
    "latency_per_completion_token_ms": 0.05,
    "answer_tokens_min": 2,
    "answer_tokens_max": 6,
    "seed": 7,
}


def start(
    emu: RunningEmulator, *args: str, env_overrides: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIGACHAT_")}
    env.update(emu.client_env())
    env.update(env_overrides or {})
    return subprocess.Popen(
        [sys.executable, "-c", "from batch.cli import main; main()", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def gigabatch(emu: RunningEmulator, *args: str, timeout: float = 60) -> tuple[int, str]:
    proc = start(emu, *args)
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    with serve_emulator(profile("b2b", stream_limit=8, **FAST)) as emu:
        yield emu


def chat_jobs(path: Path, n: int, *, bad_every: int = 0) -> set[str]:
    """`n` chat jobs; every `bad_every`-th names a model the server does not have (404)."""
    with path.open("w") as f:
        for i in range(n):
            job: dict[str, Any] = {"id": f"q{i}", "prompt": f"question number {i}"}
            if bad_every and i % bad_every == 0:
                job["model"] = "NoSuchModel"
            f.write(json.dumps(job) + "\n")
    return {f"q{i}" for i in range(n)}


def ids(out: Path, sub: str) -> list[str]:
    files = sorted((out / sub).glob("part-*.parquet"))
    if not files:
        return []
    return list(ds.dataset(files).to_table(columns=["id"]).column("id").to_pylist())


def input_ids(path: Path) -> set[str]:
    """The ids of a sample file, as the output's string ids."""
    if path.suffix == ".parquet":
        values = ds.dataset(path).to_table(columns=["id"]).column("id").to_pylist()
    else:
        values = [json.loads(line)["id"] for line in path.open()]
    return {str(v) for v in values}


@pytest.mark.parametrize("name", ["chat.jsonl", "chat.parquet"])
def test_chat_sample_runs_into_a_dataset_every_reader_opens(
    emulator: RunningEmulator, tmp_path: Path, name: str
) -> None:
    out = tmp_path / "out"
    code, err = gigabatch(emulator, "run", str(SAMPLES / name), "--out", str(out))
    assert code == 0, err
    expected = input_ids(SAMPLES / name)
    results = out / "results"
    assert set(ds.dataset(results).to_table().column("id").to_pylist()) == expected
    assert set(pd.read_parquet(results)["id"]) == expected
    assert set(pl.read_parquet(f"{results}/*.parquet")["id"].to_list()) == expected
    rows = duckdb.sql(f"select count(*), count(distinct id) from '{results}/*.parquet'")
    assert rows is not None
    assert rows.fetchall() == [(len(expected), len(expected))]
    table = ds.dataset(results).to_table()
    assert {"content", "finish_reason", "model", "prompt_tokens", "latency_ms", "attempts"} <= set(
        table.column_names
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["tokens"]["chat"]["total"] > 0


@pytest.mark.parametrize("name", ["embeddings.jsonl", "embeddings.parquet"])
def test_embedding_sample_runs_into_fixed_size_vectors(
    emulator: RunningEmulator, tmp_path: Path, name: str
) -> None:
    out = tmp_path / "out"
    args = ("run", str(SAMPLES / name), "--kind", "embed", "--out", str(out))
    code, err = gigabatch(emulator, *args)
    assert code == 0, err
    table = ds.dataset(out / "results").to_table()
    assert set(table.column("id").to_pylist()) == input_ids(SAMPLES / name)
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 1024)


def test_kill_9_at_random_moments_then_resume_gives_every_id_exactly_once(
    tmp_path: Path,
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    expected = chat_jobs(jobs, 600, bad_every=25)
    out = tmp_path / "out"
    rng = random.Random(4)
    args = ("run", str(jobs), "--out", str(out), "--flush-interval", "0.05", "-q")
    cfg = profile("b2b", stream_limit=8, **{**FAST, "latency_base_ms": 10.0})
    with serve_emulator(cfg) as emu:
        for _ in range(4):
            proc = start(emu, *args)
            time.sleep(rng.uniform(0.6, 1.6))
            proc.kill()
            proc.wait()
            done = ids(out, "results") + ids(out, "failed")
            assert len(done) == len(set(done))  # readable, and no id twice
        code, err = gigabatch(emu, *args)
    assert code == 3, err  # the NoSuchModel jobs failed
    results, failed = ids(out, "results"), ids(out, "failed")
    everything = Counter(results + failed)
    assert set(everything) == expected
    assert max(everything.values()) == 1
    assert set(failed) == {f"q{i}" for i in range(0, 600, 25)}


def test_429_storm_with_retry_after_sends_nothing_inside_the_window(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    chat_jobs(jobs, 150)
    cfg = profile(
        "b2b", stream_limit=8, fault_storm=0.015, storm_s=0.3, retry_after="seconds", **FAST
    )
    with serve_emulator(cfg) as emu:
        code, err = gigabatch(emu, "run", str(jobs), "--out", str(tmp_path / "out"), "-q")
        stats = emu.stats()
    assert code == 0, err
    windows = stats["retry_after_windows"]
    assert windows, "the storm never started"
    # Requests already on their way when the window opened may land in its first moments;
    # after that (once the first 429 has reached the client) nothing may arrive.
    in_flight_slack = 0.05
    inside = [
        a
        for a in stats["arrivals"]
        for w in windows
        if w["start"] + in_flight_slack < a["t"] < w["end"] and a["path"].startswith("/api/v1/chat")
    ]
    assert inside == []


def test_limiter_settles_near_the_servers_stream_limit(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    chat_jobs(jobs, 500)
    cfg = profile(
        "b2b", stream_limit=4, retry_after="none", **{**FAST, "latency_base_ms": 15.0}
    )
    out = tmp_path / "out"
    with serve_emulator(cfg) as emu:
        code, err = gigabatch(emu, "run", str(jobs), "--out", str(out), "--max-concurrency", "16")
        stats = emu.stats(arrivals=False)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert 3 <= summary["concurrency"]["settled"] <= 6
    assert summary["concurrency"]["server_limit_found"] is True
    assert summary["rate_limited"] < 0.05 * summary["requests"]
    assert stats["rate_limited"] == summary["rate_limited"]


@pytest.mark.parametrize(
    ("signum", "code", "status"),
    [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")],
)
def test_signal_commits_what_was_answered_and_exits_143_or_130(
    tmp_path: Path, signum: int, code: int, status: str
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    expected = chat_jobs(jobs, 300)
    out = tmp_path / "out"
    cfg = profile("b2b", stream_limit=4, **{**FAST, "latency_base_ms": 100.0})
    args = ("run", str(jobs), "--out", str(out), "--flush-interval", "0.1", "-q")
    with serve_emulator(cfg) as emu:
        proc = start(emu, *args, "--grace-period", "2")
        deadline = time.monotonic() + 20
        while not list((out / "results").glob("part-*.parquet")):
            assert time.monotonic() < deadline, "no part committed"
            time.sleep(0.05)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == code, err
        summary = json.loads((out / "summary.json").read_text())
        assert summary["status"] == status
        # The status says what happened, the message what to do (not "interrupted: interrupted").
        assert status not in summary["message"] and "run the same command" in summary["message"]
        answered = ids(out, "results")
        assert 0 < len(answered) < len(expected)
        assert summary["jobs"]["succeeded"] == len(answered)


def test_fatal_error_stops_the_run_with_one_line_and_exit_1(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    chat_jobs(jobs, 20)
    with serve_emulator(profile("b2b", balance_tokens=0, **FAST)) as emu:
        code, err = gigabatch(emu, "run", str(jobs), "--out", str(tmp_path / "out"), "-q")
    assert code == 1
    assert err.strip().splitlines() == [err.strip()]
    assert err.startswith("fatal: HTTP 402")


def test_changed_input_is_refused_on_resume(emulator: RunningEmulator, tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    chat_jobs(jobs, 5)
    out = tmp_path / "out"
    code, err = gigabatch(emulator, "run", str(jobs), "--out", str(out), "-q")
    assert code == 0, err
    with jobs.open("a") as f:
        f.write(json.dumps({"id": "new", "prompt": "one more"}) + "\n")
    code, err = gigabatch(emulator, "run", str(jobs), "--out", str(out), "-q")
    assert code == 2
    assert "input file changed" in err and "--restart" in err


def test_bad_input_gives_the_documented_errors_and_exit_2(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    jobs = tmp_path / "bad.jsonl"
    jobs.write_text('{"id": "a", "prompt": "fine"}\n{"id": "a", "prompt": "again"}\n{"id": 3}\n')
    code, err = gigabatch(emulator, "run", str(jobs), "--out", str(tmp_path / "out"))
    assert code == 2
    assert "bad.jsonl line 3" in err and "duplicate id 'a'" in err
    proc = start(emulator, "validate", str(jobs))
    stdout, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "line 2, field 'id'" in stdout and "line 3, field 'prompt'" in stdout
    assert emulator.stats(arrivals=False)["requests"].get("/api/v1/chat/completions") is None


def test_status_shows_done_failed_and_remaining(emulator: RunningEmulator, tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    chat_jobs(jobs, 10, bad_every=5)
    out = tmp_path / "out"
    code, err = gigabatch(emulator, "run", str(jobs), "--out", str(out), "-q")
    assert code == 3, err
    proc = start(emulator, "status", str(out), "--json")
    stdout, _ = proc.communicate(timeout=30)
    status = json.loads(stdout)
    assert (status["succeeded"], status["failed"], status["remaining"]) == (8, 2, 0)
    assert status["tokens"]["total"] > 0 and status["cost"] > 0
