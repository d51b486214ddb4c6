"""Throughput of `--ray` at 1 and 2 worker actors against the plain local run, the
coordinator's cost per request, and the share of 429s.

    python -m bench.ray_scaling [--kind chat|embed] [--jobs N] [--stream-limit L] [--repeat R]

The emulator runs in its own process at zero latency with a high stream limit, so what is
measured is the client side: a local run (one process), then the same job file through a
local Ray cluster (started once, 2 CPUs) with 1 and 2 workers. Each figure is the median
of R runs; a run's rate is taken between a 1-job run (the fixed cost: validation, actors
starting) and an N-job run, so start-up does not dilute it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from batch.emulator import RunningEmulator, profile, serve_emulator
from batch.run_config import RunConfig
from batch.runner import run_jobs
from batch.settings import ClientSettings
from bench.jobgen import write_chat_jobs, write_embedding_jobs
from jobs.chat import ChatKind
from jobs.embeddings import EmbeddingsKind


@dataclass(frozen=True)
class Timed:
    seconds: float
    requests: int
    rate_limited: int
    cluster: dict[str, Any]


def timed_run(
    emu: RunningEmulator,
    jobs: Path,
    work: Path,
    ray: str | None,
    workers: int | None,
    args: Any,
) -> Timed:
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    config = RunConfig(
        jobs_path=jobs,
        out_dir=out,
        kind=EmbeddingsKind() if args.kind == "embed" else ChatKind(),
        client_settings=ClientSettings.from_env(emu.client_env()),
        max_concurrency=args.concurrency,
        progress="off",
        handle_signals=False,
        ray=ray,
        ray_workers=workers,
    )
    started = time.perf_counter()
    summary = anyio.run(run_jobs, config)
    seconds = time.perf_counter() - started
    assert summary.status == "completed", summary.message
    written = json.loads((out / "summary.json").read_text())
    cluster_file = out / "cluster.json"
    cluster = json.loads(cluster_file.read_text()) if cluster_file.exists() else {}
    return Timed(seconds, written["requests"], written["rate_limited"], cluster)


def measure(
    emu: RunningEmulator, work: Path, n: int, ray: str | None, workers: int | None, args: Any
) -> dict[str, float]:
    write = write_embedding_jobs if args.kind == "embed" else write_chat_jobs
    one = write(work / "one.jsonl", 1, words=(5, 10))
    many = write(work / "many.jsonl", n, words=(5, 10))
    rates, costs, loop_costs, shares, fixed = [], [], [], [], []
    for _ in range(args.repeat):
        base = timed_run(emu, one, work, ray, workers, args)
        full = timed_run(emu, many, work, ray, workers, args)
        rates.append((n - 1) / max(1e-9, full.seconds - base.seconds))
        fixed.append(base.seconds)
        shares.append(full.rate_limited / max(1, full.requests))
        if full.cluster:
            costs.append(full.cluster["cpu_us_per_request"])
            loop_costs.append(full.cluster["loop_cpu_us_per_request"])
    figures = {
        "jobs_per_s": statistics.median(rates),
        "fixed_s": statistics.median(fixed),
        "share_429": statistics.median(shares),
    }
    if costs:
        figures["coordinator_cpu_us_per_request"] = statistics.median(costs)
        figures["loop_cpu_us_per_request"] = statistics.median(loop_costs)
        figures["slots_per_lease"] = full.cluster["slots_per_lease"]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kind", choices=("chat", "embed"), default="chat")
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--stream-limit", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="gigabatch")
    cfg = profile("fast", stream_limit=args.stream_limit, answer_tokens_min=2, answer_tokens_max=6)
    work = Path(tempfile.mkdtemp(prefix="ray-scaling-"))
    rows: dict[str, dict[str, float]] = {}
    try:
        with serve_emulator(cfg, subprocess=True) as emu:
            rows["local"] = measure(emu, work, args.jobs, None, None, args)
            for workers in (1, 2):
                rows[f"ray, {workers} worker(s)"] = measure(
                    emu, work, args.jobs, "auto", workers, args
                )
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    local = rows["local"]["jobs_per_s"]
    print(
        f"{args.jobs} {args.kind} jobs, stream limit {args.stream_limit}, zero latency, "
        f"--max-concurrency {args.concurrency}, median of {args.repeat}"
    )
    print(
        f"{'executor':<20} {'jobs/s':>8} {'x local':>8} {'fixed s':>8} {'429 %':>6} "
        f"{'coord. CPU-us/req':>18} {'loop CPU-us/req':>16} {'slots/lease':>12}"
    )
    for name, f in rows.items():
        print(
            f"{name:<20} {f['jobs_per_s']:>8.0f} {f['jobs_per_s'] / local:>8.2f} "
            f"{f['fixed_s']:>8.2f} {100 * f['share_429']:>6.2f} "
            f"{f.get('coordinator_cpu_us_per_request', 0.0):>18.0f} "
            f"{f.get('loop_cpu_us_per_request', 0.0):>16.0f} "
            f"{f.get('slots_per_lease', 0.0):>12.2f}"
        )


if __name__ == "__main__":
    main()
