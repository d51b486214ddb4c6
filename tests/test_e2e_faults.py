"""Resilience end to end: the real CLI in a subprocess against the emulator's faults on
loopback. Hung and trickling answers, 429s without Retry-After, outages, random 401s, a 402,
OAuth 429s, and settings that point at the wrong place (each fatal within seconds)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest

from batch.emulator import RunningEmulator, profile, serve_emulator

pytestmark = pytest.mark.e2e

FAST = {
    "latency_base_ms": 3.0,
    "latency_per_prompt_token_ms": 0.0,
    "latency_per_completion_token_ms": 0.05,
    "answer_tokens_min": 2,
    "answer_tokens_max": 6,
    "retry_after": "none",
    "seed": 11,
}


@pytest.fixture
def emu() -> Iterator[RunningEmulator]:
    with serve_emulator(profile("b2b", stream_limit=8, **FAST)) as running:
        yield running


def start(emu: RunningEmulator, *args: str, **env_overrides: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIGACHAT_")}
    env.update(emu.client_env())
    env.update(env_overrides)
    return subprocess.Popen(
        [sys.executable, "-c", "from batch.cli import main; main()", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def gigabatch(
    emu: RunningEmulator, *args: str, timeout: float = 60, **env: str
) -> tuple[int, str, float]:
    started = time.monotonic()
    proc = start(emu, *args, **env)
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err, time.monotonic() - started


def chat_jobs(path: Path, n: int) -> set[str]:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"q{i}", "prompt": f"question number {i}"}) + "\n")
    return {f"q{i}" for i in range(n)}


def ids(out: Path, sub: str) -> list[str]:
    files = sorted((out / sub).glob("part-*.parquet"))
    if not files:
        return []
    return list(ds.dataset(files).to_table(columns=["id"]).column("id").to_pylist())


def summary(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "summary.json").read_text())
    return data


def run_to_completion(emu: RunningEmulator, tmp_path: Path, n: int, *args: str) -> str:
    """Run `n` jobs; every one must succeed exactly once (exit 0). Returns stderr."""
    jobs = tmp_path / "jobs.jsonl"
    expected = chat_jobs(jobs, n)
    out = tmp_path / "out"
    code, err, _ = gigabatch(emu, "run", str(jobs), "--out", str(out), *args)
    assert code == 0, err
    assert sorted(ids(out, "results")) == sorted(expected)
    assert ids(out, "failed") == []
    return err


def wait_for_answers(emu: RunningEmulator, count: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        chat = emu.stats(arrivals=False)["requests"].get("/api/v1/chat/completions", {})
        if int(chat.get("200", 0)) >= count:
            return
        time.sleep(0.02)
    raise AssertionError("the run never got going")


# --- slow answers -------------------------------------------------------------------------


def test_hung_requests_are_abandoned_at_the_deadline_and_retried(
    emu: RunningEmulator, tmp_path: Path
) -> None:
    emu.reconfigure(fault_hang=0.05, hang_s=60)
    run_to_completion(emu, tmp_path, 120, "--timeout", "0.5")
    assert emu.stats(arrivals=False)["faults"]["hang"] > 0


def test_trickling_answers_are_abandoned_at_the_deadline_and_retried(
    emu: RunningEmulator, tmp_path: Path
) -> None:
    emu.reconfigure(fault_drip=0.05, drip_ms=50)  # a 300-byte answer would take 15 s
    run_to_completion(emu, tmp_path, 120, "--timeout", "1")
    assert emu.stats(arrivals=False)["faults"]["drip"] > 0


# --- 429s without Retry-After -------------------------------------------------------------


@pytest.mark.parametrize("fault", ["fault_429", "fault_error_body"])
def test_isolated_429s_without_retry_after_keep_the_concurrency(
    emu: RunningEmulator, tmp_path: Path, fault: str
) -> None:
    emu.reconfigure(**{fault: 0.03})
    run_to_completion(emu, tmp_path, 800)
    result = summary(tmp_path / "out")
    assert result["rate_limited"] > 10  # the faults happened, and were 429s to the run
    assert result["concurrency"]["settled"] >= 7  # the server holds 8


# --- outages --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["drop", "503"])
def test_an_outage_pauses_the_run_and_no_row_fails(
    emu: RunningEmulator, tmp_path: Path, mode: str
) -> None:
    emu.reconfigure(latency_base_ms=10.0, outage_mode=mode)
    jobs = tmp_path / "jobs.jsonl"
    expected = chat_jobs(jobs, 600)
    out = tmp_path / "out"
    proc = start(emu, "run", str(jobs), "--out", str(out), "--max-attempts", "2")
    wait_for_answers(emu, 50)
    emu.reconfigure(start_outage_s=3)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert sorted(ids(out, "results")) == sorted(expected)
    assert ids(out, "failed") == []
    assert "API unreachable since" in err and "API back at" in err
    assert emu.stats(arrivals=False)["faults"]["outage"] > 0


def test_an_outage_past_max_outage_stops_with_exit_1_and_a_resume_continues(
    emu: RunningEmulator, tmp_path: Path
) -> None:
    emu.reconfigure(latency_base_ms=10.0)
    jobs = tmp_path / "jobs.jsonl"
    expected = chat_jobs(jobs, 600)
    out = tmp_path / "out"
    args = ("run", str(jobs), "--out", str(out), "--max-outage", "2")
    proc = start(emu, *args)
    wait_for_answers(emu, 50)
    emu.reconfigure(start_outage_s=600)
    began = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert time.monotonic() - began < 15
    assert "unreachable for" in err and "--max-outage 2" in err
    assert ids(out, "failed") == []  # nothing failed for the outage's sake
    answered = ids(out, "results")
    assert 50 <= len(answered) < 600

    emu.reconfigure(start_outage_s=0)
    code, err, _ = gigabatch(emu, *args)
    assert code == 0, err
    assert sorted(ids(out, "results")) == sorted(expected)  # each exactly once


# --- the account and its tokens -------------------------------------------------------------


def test_random_401s_get_a_fresh_token_and_every_row_succeeds(
    emu: RunningEmulator, tmp_path: Path
) -> None:
    emu.reconfigure(fault_401=0.03, latency_base_ms=10.0)  # a run of 2 s or so
    run_to_completion(emu, tmp_path, 600)
    assert emu.stats(arrivals=False)["oauth_calls"] > 1


def test_402_after_some_answers_stops_the_run_with_exit_1_and_keeps_the_answers(
    emu: RunningEmulator, tmp_path: Path
) -> None:
    emu.reconfigure(payment_after=40)
    jobs = tmp_path / "jobs.jsonl"
    chat_jobs(jobs, 300)
    out = tmp_path / "out"
    code, err, _ = gigabatch(emu, "run", str(jobs), "--out", str(out))
    assert code == 1, err
    assert "HTTP 402" in err
    chat = emu.stats(arrivals=False)["requests"]["/api/v1/chat/completions"]
    assert len(ids(out, "results")) == chat["200"] >= 40  # every answer paid for is kept
    assert ids(out, "failed") == []


def test_oauth_429s_are_retried_by_the_token_flow_and_never_reach_the_api_limiter(
    emu: RunningEmulator, tmp_path: Path
) -> None:
    # A refresh every half second; 7 token requests in 10 get a 429 (refused, then retried).
    emu.reconfigure(fault_oauth_429=0.7, token_ttl_s=1.0, latency_base_ms=40.0)
    run_to_completion(emu, tmp_path, 300)
    stats = emu.stats(arrivals=False)
    assert stats["requests"]["/api/v2/oauth"].get("429", 0) > 0
    api_429s = stats["requests"]["/api/v1/chat/completions"].get("429", 0)
    assert summary(tmp_path / "out")["rate_limited"] == api_429s  # the API's own only


# --- misconfiguration: fatal within seconds -----------------------------------------------


def closed_port_url(path: str) -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


def fails_fast(emu: RunningEmulator, tmp_path: Path, *args: str, **env: str) -> str:
    jobs = tmp_path / "jobs.jsonl"
    chat_jobs(jobs, 200)
    emu.reset_stats()
    code, err, took = gigabatch(
        emu, "run", str(jobs), "--out", str(tmp_path / "out"), *args, timeout=30, **env
    )
    assert code == 1, err
    assert took < 10
    # Besides the run's start line (what runs, with which settings), one line: the error.
    lines = [line for line in err.splitlines() if line.strip() and " start: " not in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    stats = emu.stats(arrivals=False)
    assert sum(sum(c.values()) for c in stats["requests"].values()) < 10
    return lines[0]


def test_a_refused_oauth_url_is_fatal_within_seconds(emu: RunningEmulator, tmp_path: Path) -> None:
    url = closed_port_url("/api/v2/oauth")
    line = fails_fast(emu, tmp_path, GIGACHAT_AUTH_URL=url)
    assert url in line and "GIGACHAT_AUTH_URL" in line


def test_an_oauth_url_that_is_not_oauth_is_fatal_within_seconds(
    emu: RunningEmulator, tmp_path: Path
) -> None:
    url = emu.auth_url.replace("/api/v2/oauth", "/api/v2/no-oauth-here")
    line = fails_fast(emu, tmp_path, GIGACHAT_AUTH_URL=url)
    assert url in line and "404" in line


def test_a_refused_base_url_is_fatal_within_seconds(emu: RunningEmulator, tmp_path: Path) -> None:
    emu.reconfigure(token_ttl_s=1800.0)
    url = closed_port_url("/api/v1")
    line = fails_fast(emu, tmp_path, GIGACHAT_BASE_URL=url)
    assert url in line and "GIGACHAT_BASE_URL" in line


def test_a_base_url_whose_every_path_is_404_is_fatal_within_seconds(
    emu: RunningEmulator, tmp_path: Path
) -> None:
    url = emu.base_url.replace("/api/v1", "/wrong/v1")
    line = fails_fast(emu, tmp_path, GIGACHAT_BASE_URL=url)
    assert url in line and "404" in line


def test_an_unknown_default_model_is_fatal_within_seconds(
    emu: RunningEmulator, tmp_path: Path
) -> None:
    line = fails_fast(emu, tmp_path, "--model", "GigaChat-Nonexistent")
    assert "'GigaChat-Nonexistent'" in line and "GIGACHAT_MODEL" in line
