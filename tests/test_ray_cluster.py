"""`--ray`: the same run on a local Ray cluster (2 CPUs, started once for this module),
against the emulator on loopback. In-process runs join the module's cluster; the driver
crash test runs the real CLI in a subprocess with the cluster's address."""

from __future__ import annotations

import json
import os
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
from batch.errors import RunRefused
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
    config = RunConfig(
        jobs_path=jobs,
        out_dir=out,
        kind=kind or ChatKind(),
        client_settings=ClientSettings.from_env(emu.client_env()),
        retry=RetryPolicy(max_attempts=3, initial=0.01, max_wait=0.05),
        flush_interval=0.2,
        progress="off",
        handle_signals=False,
        ray="auto",
        ray_workers=2,
        **kw,
    )
    return anyio.run(run_jobs, config)


def test_chat_sample_runs_on_the_cluster_into_one_dataset(cluster: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
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


def test_embeddings_run_on_the_cluster_into_fixed_size_vectors(
    cluster: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    with serve_emulator(profile("b2b", **FAST)) as emu:
        summary = cluster_run(emu, SAMPLES / "embeddings.jsonl", out, kind=EmbeddingsKind())
    assert summary.status == "completed", summary.message
    table = ds.dataset(out / "results").to_table()
    expected = [json.loads(line)["id"] for line in (SAMPLES / "embeddings.jsonl").open()]
    assert sorted(table.column("id").to_pylist()) == sorted(str(i) for i in expected)
    assert {len(v) for v in table.column("embedding").to_pylist()} == {1024}


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
    assert result, "the run did not end"
    assert result[0].status == "completed", result[0].message
    assert before < len(expected)
    assert Counter(ids(out, "results")) == Counter(dict.fromkeys(expected, 1))
    # The kill caught batches in flight, and they went to the other worker.
    assert json.loads((out / "cluster.json").read_text())["lost_batches"] >= 1


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


def test_resume_after_kill_9_of_the_driver_gives_every_id_exactly_once(
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
            "--flush-interval",
            "0.2",
            "--ray",
            cluster,
            "--ray-workers",
            "2",
        ]
        driver = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 90
        while len(ids(out, "results")) < 40 and time.monotonic() < deadline:
            assert driver.poll() is None, driver.communicate()[1]
            time.sleep(0.05)
        driver.kill()
        driver.wait()
        before = ids(out, "results")
        assert 0 < len(before) < len(expected)
        resumed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert Counter(ids(out, "results")) == Counter(dict.fromkeys(expected, 1))


def test_budgets_with_ray_are_refused_before_anything_is_sent(cluster: str, tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    chat_jobs(jobs, 5)
    with serve_emulator(profile("b2b", **FAST)) as emu:
        with pytest.raises(RunRefused, match="--ray"):
            cluster_run(emu, jobs, tmp_path / "out", max_cost=1.0)
        assert emu.stats(arrivals=False)["requests"] == {}


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
