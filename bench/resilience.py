"""Resilience benchmark: chat runs against the emulator's faults, compared with a clean run.

    python -m bench.resilience [clean 429 body429 storm hung drip outage] [--repeat N]

Every case runs the real CLI in its own process against an emulator in another (stream
limit 8, 40 ms per answer, no `Retry-After` anywhere: the real API sends none), with the
default settings, and prints the median over `--repeat` runs with its target:

- 429 / body429: 1% isolated 429s without Retry-After / 1% 429 bodies in 200s:
  throughput >= 90% of the clean run's;
- storm: a 3 s storm of 429s without Retry-After mid-run: costs <= 3 s + 2 s;
- hung: 2% of requests never answered: every row succeeds, time <= clean + 3 deadlines;
- drip: 5% of answers trickle one byte per 50 ms: every row succeeds;
- outage: the API gone for 60 s mid-run (connections dropped): every row succeeds,
  time <= clean + 60 s + 10 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from batch.emulator import profile, serve_emulator
from batch.settings import DEFAULT_TIMEOUT
from bench.jobgen import write_chat_jobs

BASE = {
    "stream_limit": 8,
    "latency_base_ms": 40.0,
    "latency_per_prompt_token_ms": 0.0,
    "latency_per_completion_token_ms": 0.0,
    "retry_after": "none",
    "seed": 5,
}
STORM_S = 3.0
OUTAGE_S = 60.0
# Mid-run events start once this many answers are in.
EVENT_AFTER_ANSWERS = 600


@dataclass(frozen=True)
class Case:
    name: str
    knobs: dict[str, Any] = field(default_factory=dict)
    # Called with the running emulator once the run is well under way.
    event: Callable[[Any], None] | None = None


CASES = {
    "clean": Case("clean"),
    "429": Case("429", {"fault_429": 0.01}),
    "body429": Case("body429", {"fault_error_body": 0.01}),
    "storm": Case("storm", event=lambda emu: emu.reconfigure(start_storm_s=STORM_S)),
    "hung": Case("hung", {"fault_hang": 0.02, "hang_s": 3600.0}),
    "drip": Case("drip", {"fault_drip": 0.05, "drip_ms": 50.0}),
    "outage": Case("outage", event=lambda emu: emu.reconfigure(start_outage_s=OUTAGE_S)),
}


@dataclass(frozen=True)
class Result:
    seconds: float
    succeeded: int
    failed: int
    exit_code: int
    settled: float


def _answers(emu: Any) -> int:
    chat = emu.stats(arrivals=False)["requests"].get("/api/v1/chat/completions", {})
    return int(chat.get("200", 0))


def _fire_when_under_way(emu: Any, event: Callable[[Any], None], done: threading.Event) -> None:
    while not done.is_set():
        if _answers(emu) >= EVENT_AFTER_ANSWERS:
            event(emu)
            return
        time.sleep(0.05)


def run_case(case: Case, jobs: Path, out: Path) -> Result:
    config = profile("b2b", **{**BASE, **case.knobs})
    with serve_emulator(config, subprocess=True) as emu:
        env = {**os.environ, **emu.client_env()}
        cmd = [sys.executable, "-m", "batch", "run", str(jobs), "--out", str(out), "--quiet"]
        done = threading.Event()
        watcher = None
        if case.event is not None:
            watcher = threading.Thread(target=_fire_when_under_way, args=(emu, case.event, done))
            watcher.start()
        started = time.monotonic()
        child = subprocess.run(cmd, env=env, capture_output=True, check=False)
        seconds = time.monotonic() - started
        done.set()
        if watcher is not None:
            watcher.join()
    summary = orjson.loads((out / "summary.json").read_bytes())
    return Result(
        seconds=seconds,
        succeeded=int(summary["jobs"]["succeeded"]),
        failed=int(summary["jobs"]["failed"]),
        exit_code=child.returncode,
        settled=float(summary["concurrency"]["settled"]),
    )


def _target(name: str, median: float, clean: float | None) -> str:
    if clean is None:
        return ""
    if name in ("429", "body429"):
        share = clean / median
        return f"throughput {share:.1%} of clean (target >= 90%)"
    if name == "storm":
        return f"cost {median - clean:.1f} s (target <= {STORM_S + 2:.0f} s)"
    if name == "hung":
        limit = 3 * DEFAULT_TIMEOUT
        return f"extra {median - clean:.1f} s (target <= 3 deadlines = {limit:.0f} s)"
    if name == "outage":
        return f"extra {median - clean:.1f} s (target <= {OUTAGE_S + 10:.0f} s)"
    return f"extra {median - clean:.1f} s"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("which", nargs="*", default=list(CASES))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--clean-s", type=float, default=None, help="a clean median from before")
    args = parser.parse_args(argv)
    clean: float | None = args.clean_s
    results: dict[str, list[Result]] = {name: [] for name in args.which}
    with tempfile.TemporaryDirectory(prefix="gigabatch-resilience-") as tmp:
        jobs = write_chat_jobs(Path(tmp) / "jobs.jsonl", args.jobs)
        # Cases take turns, so the load of a shared machine drifts over all of them alike.
        for i in range(args.repeat):
            for name in args.which:
                out = Path(tmp) / f"out-{name}-{i}"
                results[name].append(run_case(CASES[name], jobs, out))
    if "clean" in results:
        clean = statistics.median(r.seconds for r in results["clean"])
    for name, runs in results.items():
        median = statistics.median(r.seconds for r in runs)
        rows = ", ".join(
            f"{r.seconds:.1f} s ({r.succeeded} ok, {r.failed} failed, exit {r.exit_code}, "
            f"settled {r.settled:g})"
            for r in runs
        )
        every = all(r.succeeded == args.jobs and r.exit_code == 0 for r in runs)
        print(
            f"{name:8} median {median:6.1f} s | every row succeeded: {every} | "
            f"{_target(name, median, clean)} | runs: {rows}",
            flush=True,
        )

if __name__ == "__main__":
    main()
