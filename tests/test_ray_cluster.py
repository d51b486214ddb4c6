"""`--ray`: the same run on a local Ray cluster (2 CPUs, started once for this module),
against the emulator on loopback. In-process runs join the module's cluster; the driver
crash test runs the real CLI in a subprocess with the cluster's address."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pyarrow.dataset as ds
import pytest
import ray

from batch.emulator import RunningEmulator, profile, serve_emulator
from batch.eventlog import ATTEMPT, read_events
from batch.output_uri import open_output_uri
from batch.retry import RetryPolicy
from batch.run_config import RunConfig
from batch.runner import run_jobs
from batch.settings import ClientSettings
from batch.summary import RunSummary
from jobs.base import JobKind
from jobs.chat import ChatKind
from jobs.embeddings import EmbeddingsKind

pytestmark = pytest.mark.e2e

SAMPLES = Path(__file__).resolve().parent.parent / "sample_jobs"
FAST = {
    "latency_base_ms": 3.0,
    "latency_per_prompt_token_ms": 0.0,
    "latency_per_completion_token_ms": 0.05,
    "answer_tokens_min": 2,
    "answer_tokens_max": 6,
    "seed": 7,
}


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """The module's Ray cluster; yields its address for subprocess drivers."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="gigabatch")
    try:
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()


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


def cluster_run(
    emu: RunningEmulator, jobs: Path, out: Path, kind: JobKind | None = None, **kw: Any
) -> RunSummary:
    options: dict[str, Any] = {
        "client_settings": ClientSettings.from_env(emu.client_env()),
        "retry": RetryPolicy(max_attempts=3, initial=0.01, max_wait=0.05),
        "flush_interval": 0.2,
        "progress": "off",
        "handle_signals": False,
        "ray": "auto",
        "ray_workers": 2,
        **kw,
    }
    config = RunConfig(jobs_path=jobs, out_dir=out, kind=kind or ChatKind(), **options)
    return anyio.run(run_jobs, config)


def test_chat_sample_runs_on_the_cluster_into_one_dataset(cluster: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    began = time.time()
    with serve_emulator(profile("b2b", stream_limit=8, **FAST)) as emu:
        summary = cluster_run(emu, SAMPLES / "chat.jsonl", out)
        served = emu.stats(arrivals=False)
    expected = {json.loads(line)["id"] for line in (SAMPLES / "chat.jsonl").open()}
    assert summary.status == "completed", summary.message
    assert Counter(ids(out, "results")) == Counter({str(i): 1 for i in expected})
    table = ds.dataset(out / "results").to_table()
    assert set(table.column_names) >= {"id", "content", "prompt_tokens", "attempts"}
    written = json.loads((out / "summary.json").read_text())
    assert written["rate_limited"] == served["rate_limited"]
    assert written["requests"] == sum(
        sum(c.values()) for p, c in served["requests"].items() if p.startswith("/api/v1/chat")
    )
    # The workers' attempts reach the driver's event log, as a local run's do.
    attempts = [e for e in read_events(out) if e.kind == ATTEMPT]
    assert len(attempts) == written["requests"]
    assert sum(e.jobs for e in attempts if e.status == 200) == len(expected)
    assert all(began < e.t < e.t + e.duration < time.time() for e in attempts)


def test_a_cluster_run_writes_an_output_uri_from_its_driver(cluster: str, tmp_path: Path) -> None:
    uri = (tmp_path / "shared").as_uri()
    output = open_output_uri(uri, state_dir=tmp_path / "state")
    with serve_emulator(profile("b2b", stream_limit=8, **FAST)) as emu:
        summary = cluster_run(emu, SAMPLES / "chat.jsonl", output.state_dir, output=output)
    expected = {json.loads(line)["id"] for line in (SAMPLES / "chat.jsonl").open()}
    assert summary.status == "completed", summary.message
    got = ds.dataset(f"{uri}/results").to_table(columns=["id"]).column("id").to_pylist()
    assert Counter(got) == Counter({str(i): 1 for i in expected})
    for name in ("manifest.json", "summary.json", "cluster.json"):
        assert (tmp_path / "shared" / name).is_file(), name
    assert not (tmp_path / "state" / "results").exists()  # the parts went to the URI only


def test_embeddings_run_on_the_cluster_and_a_second_run_is_answered_by_the_cache(
    cluster: str, tmp_path: Path
) -> None:
    texts, cache = SAMPLES / "embeddings.jsonl", tmp_path / "cache"
    with serve_emulator(profile("b2b", **FAST)) as emu:
        first = cluster_run(emu, texts, tmp_path / "a", kind=EmbeddingsKind(), cache_dir=cache)
        emu.reset_stats()
        # Into a new output directory: only the cache (kept by the driver) can answer.
        second = cluster_run(emu, texts, tmp_path / "b", kind=EmbeddingsKind(), cache_dir=cache)
        sent = emu.stats(arrivals=False)["requests"]
    assert first.status == second.status == "completed", first.message
    table = ds.dataset(tmp_path / "a" / "results").to_table()
    expected = [json.loads(line)["id"] for line in texts.open()]
    assert sorted(table.column("id").to_pylist()) == sorted(str(i) for i in expected)
    assert {len(v) for v in table.column("embedding").to_pylist()} == {1024}
    assert "/api/v1/embeddings" not in sent
    reused = second.data["jobs"]["this_run"]
    assert reused["from_cache"] == first.data["jobs"]["this_run"]["succeeded"] > 0
    assert sorted(ids(tmp_path / "b", "results")) == sorted(ids(tmp_path / "a", "results"))


def test_cluster_settles_at_the_servers_stream_limit_with_few_429s(
    cluster: str, tmp_path: Path
) -> None:
    jobs, out = tmp_path / "jobs.jsonl", tmp_path / "out"
    chat_jobs(jobs, 500)
    cfg = profile("b2b", stream_limit=4, retry_after="none", **{**FAST, "latency_base_ms": 15.0})
    with serve_emulator(cfg) as emu:
        summary = cluster_run(emu, jobs, out, max_concurrency=16)
        served = emu.stats(arrivals=False)
    assert summary.status == "completed", summary.message
    written = json.loads((out / "summary.json").read_text())
    # Both workers share one limiter: together they hold the server's limit, never the
    # double of it, and go over it by at most a probe's single step.
    assert 3 <= written["concurrency"]["settled"] <= 4 + 1
    assert written["concurrency"]["server_limit_found"] is True
    assert served["peak_concurrency"] >= 3
    assert served["rate_limited"] < 0.05 * written["requests"]


def test_retry_after_storm_pauses_every_worker(cluster: str, tmp_path: Path) -> None:
    jobs, out = tmp_path / "jobs.jsonl", tmp_path / "out"
    chat_jobs(jobs, 300)
    cfg = profile(
        "b2b", stream_limit=8, fault_storm=0.015, storm_s=0.3, retry_after="seconds", **FAST
    )
    with serve_emulator(cfg) as emu:
        summary = cluster_run(emu, jobs, out)
        stats = emu.stats()
    assert summary.status == "completed", summary.message
    windows = stats["retry_after_windows"]
    assert windows, "the storm never started"
    # Requests already on their way may land in a window's first moments; after that the
    # 429 has reached the coordinator and every worker waits.
    slack = 0.1
    inside = [
        a
        for a in stats["arrivals"]
        for w in windows
        if w["start"] + slack < a["t"] < w["end"] and a["path"].startswith("/api/v1/chat")
    ]
    assert inside == []


def test_killed_worker_actor_still_gives_every_id_exactly_once(
    cluster: str, tmp_path: Path
) -> None:
    jobs, out = tmp_path / "jobs.jsonl", tmp_path / "out"
    expected = chat_jobs(jobs, 400)
    cfg = profile("b2b", stream_limit=8, **{**FAST, "latency_base_ms": 40.0})
    result: list[RunSummary] = []
    with serve_emulator(cfg) as emu:
        runner = threading.Thread(target=lambda: result.append(cluster_run(emu, jobs, out)))
        runner.start()
        victim = _wait_for_worker(lambda: len(ids(out, "results")) > 20)
        before = len(ids(out, "results"))
        ray.kill(ray.get_actor(victim, namespace="gigabatch"), no_restart=False)
        runner.join(timeout=120)
        paid = _answered(emu)
    assert result, "the run did not end"
    assert result[0].status == "completed", result[0].message
    assert before < len(expected)
    assert Counter(ids(out, "results")) == Counter(dict.fromkeys(expected, 1))
    # The kill caught batches in flight, and they went to the other worker.
    assert json.loads((out / "cluster.json").read_text())["lost_batches"] >= 1
    # Paid twice at most: the answers the dead worker had received and not yet returned,
    # no more than the cluster's requests in flight (the limit, at most --max-concurrency).
    assert paid <= len(expected) + RunConfig.max_concurrency


def _wait_for_worker(ready: Any, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        names = [
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith("worker-")
        ]
        if names and ready():
            return str(names[0])
        time.sleep(0.05)
    raise AssertionError("no worker actor answered in time")


def test_resume_after_kill_9_of_the_driver_repays_only_answers_in_flight(
    cluster: str, tmp_path: Path
) -> None:
    jobs, out = tmp_path / "jobs.jsonl", tmp_path / "out"
    expected = chat_jobs(jobs, 400)
    cfg = profile("b2b", stream_limit=8, **{**FAST, "latency_base_ms": 40.0})
    with serve_emulator(cfg) as emu:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIGACHAT_")}
        env.update(emu.client_env())
        args = [
            sys.executable,
            "-m",
            "batch",
            "run",
            str(jobs),
            "--out",
            str(out),
            "-q",
            "--max-concurrency",
            "8",
            "--flush-interval",
            "30",
            "--ray",
            cluster,
            "--ray-workers",
            "2",
        ]
        driver = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 90
        while _answered(emu) < 80 and time.monotonic() < deadline:
            assert driver.poll() is None, driver.communicate()[1]
            time.sleep(0.05)
        driver.kill()
        driver.wait()
        assert ids(out, "results") == []  # no part committed (30 s flush): the journal alone
        assert (out / "journal.sqlite3").exists()
        resumed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
        sent = _answered(emu)
    assert resumed.returncode == 0, resumed.stderr
    assert Counter(ids(out, "results")) == Counter(dict.fromkeys(expected, 1))
    assert json.loads((out / "summary.json").read_text())["jobs"]["this_run"]["from_journal"] > 0
    # Paid twice: at most the 8 in flight (answered on a worker, not yet on the driver) and
    # the journal's last commit window, ~100 ms (8 streams / 40 ms: 20); two allowed.
    assert sent <= 400 + 8 + 2 * 20


def _answered(emu: RunningEmulator) -> int:
    """Chat requests answered (and billed): 429s are free and not counted."""
    chat = emu.stats(arrivals=False)["requests"].get("/api/v1/chat/completions", {})
    return int(chat.get("200", 0))


def test_a_budget_stops_the_cluster_run_as_locally_within_it_and_a_rerun_resumes(
    cluster: str, tmp_path: Path
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    with jobs.open("w") as f:
        for i in range(120):
            f.write(json.dumps({"id": f"q{i}", "prompt": f"question {i}", "max_tokens": 8}) + "\n")
    limit = 600
    with serve_emulator(profile("b2b", stream_limit=8, **FAST)) as emu:
        local = cluster_run(emu, jobs, tmp_path / "local", max_tokens=limit, ray=None)
        emu.reset_stats()
        first = cluster_run(emu, jobs, tmp_path / "out", max_tokens=limit)
        billed = emu.stats(arrivals=False)["tokens"]
        stopped_at = len(ids(tmp_path / "out", "results"))
        second = cluster_run(emu, jobs, tmp_path / "out", max_tokens=100 * limit)
    assert local.status == first.status == "budget"
    numbers = re.compile(r"\d+(\.\d+)?")
    assert numbers.sub("N", first.message) == numbers.sub("N", local.message)
    assert f"tokens of {limit}" in first.message
    assert billed["prompt"] + billed["completion"] <= limit
    assert 0 < stopped_at < 120
    assert second.status == "completed", second.message
    assert Counter(ids(tmp_path / "out", "results")) == Counter(f"q{i}" for i in range(120))


def test_an_outage_mid_run_pauses_the_cluster_and_no_row_fails(
    cluster: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs, out = tmp_path / "jobs.jsonl", tmp_path / "out"
    expected = chat_jobs(jobs, 400)
    # No Retry-After (the real API sends none): with the emulator's default 1 s on every
    # 429, the cluster's pauses at 10 ms answers covered the whole outage in 1 of ~20 runs,
    # so no request met it and the test proved nothing.
    cfg = profile("b2b", stream_limit=8, retry_after="none", **{**FAST, "latency_base_ms": 10.0})
    result: list[RunSummary] = []
    with serve_emulator(cfg) as emu:
        # Two tries a request, 10 ms apart: only the cluster-wide pause saves the rows.
        retry = RetryPolicy(max_attempts=2, initial=0.01, max_wait=0.01)
        log = {"progress": "log", "progress_interval": 0.1}
        runner = threading.Thread(
            target=lambda: result.append(cluster_run(emu, jobs, out, retry=retry, **log))
        )
        runner.start()
        _wait_for_answers(emu, 60)
        emu.reconfigure(start_outage_s=2.0)
        runner.join(timeout=120)
        faults = emu.stats(arrivals=False)["faults"]
    assert result, "the run did not end"
    assert result[0].status == "completed", result[0].message
    assert faults.get("outage", 0) >= 3  # the outage met the run's requests
    assert ids(out, "failed") == []
    assert Counter(ids(out, "results")) == Counter(dict.fromkeys(expected, 1))
    assert json.loads((out / "cluster.json").read_text())["outages"] >= 1
    said = capsys.readouterr().err
    assert "API unreachable since" in said and "resuming" in said, said
    assert "| PAUSED: API unreachable for" in said, said  # the progress line, meanwhile


def _wait_for_answers(emu: RunningEmulator, count: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if _answered(emu) >= count:
            return
        time.sleep(0.02)
    raise AssertionError("the run never got going")


def test_an_address_nothing_answers_is_refused_in_one_line(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    chat_jobs(jobs, 3)
    with serve_emulator(profile("b2b", **FAST)) as emu:
        env = {**os.environ, **emu.client_env()}
        args = ["run", str(jobs), "--out", str(tmp_path / "out"), "--ray", "127.0.0.1:1"]
        done = subprocess.run(
            [sys.executable, "-m", "batch", *args], env=env, capture_output=True, text=True
        )
        # The start-up check (a token, GET /models) may run; no job is sent.
        sent = emu.stats(arrivals=False)["requests"]
        assert set(sent) <= {"/api/v2/oauth", "/api/v1/models"}, sent
    assert done.returncode == 2
    lines = [line for line in done.stderr.strip().splitlines() if " start: " not in line]
    assert lines == [
        "error: no Ray cluster answers at 127.0.0.1:1 (Connection refused): start one with "
        "'ray start --head', or use --ray local"
    ]
