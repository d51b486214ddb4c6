"""Benchmarks of `gigabatch run` (issue 4), each printing medians and ratios to its peers.

    python -m bench.run_benchmarks [quota] [embed] [memory] [cpu] [--repeat N]

- quota:  throughput against an emulator whose stream limit (1, 10, 32) the runner is not told,
          as a share of the ceiling (limit / mean latency; also limit / the time the emulator
          really held each stream), and the share of requests refused.
- embed:  100,000 texts on the `b2b` profile, against one text per request through the
          official SDK at the same stream limit (the SDK is timed on a prefix: a rate is a rate).
- memory: peak RSS of a 1,000,000-line embedding job against a 10,000-line one.
- cpu:    CPU seconds per 1,000 chat requests at zero server latency, against a plain asyncio
          script on the official SDK.

The runner is the real CLI in a child process (`python -m batch`), measured with `wait4`
(its own CPU time and peak RSS); the emulator runs in another process.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from batch.emulator import EmulatorConfig, profile, serve_emulator
from bench.jobgen import write_chat_jobs, write_embedding_jobs
from bench.peers.inprocess import sdk_chat, sdk_embeddings_one_per_request

_NO_TOKEN_LATENCY = {"latency_per_prompt_token_ms": 0.0, "latency_per_completion_token_ms": 0.0}


@dataclass(frozen=True)
class CliRun:
    summary: dict[str, Any]
    cpu_seconds: float
    peak_rss_mb: float
    exit_code: int


def run_cli(jobs: Path, out: Path, emu: Any, *args: str) -> CliRun:
    """`gigabatch run JOBS --out OUT ARGS...` against `emu`, in a child process."""
    env = {**os.environ, **emu.client_env()}
    cmd = [sys.executable, "-m", "batch", "run", str(jobs), "--out", str(out), "--quiet", *args]
    child = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE)
    assert child.stderr is not None
    err = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode not in (0, 3):
        raise RuntimeError(f"gigabatch exited {child.returncode}: {err.decode()[-2000:]}")
    return CliRun(
        summary=orjson.loads((out / "summary.json").read_bytes()),
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        peak_rss_mb=usage.ru_maxrss / 1024,
        exit_code=child.returncode,
    )


def _served(stats: dict[str, Any], path_suffix: str) -> tuple[int, int, int]:
    """(answered 200, refused 429, all) requests to the endpoint ending in `path_suffix`."""
    ok = refused = total = 0
    for path, by_status in stats["requests"].items():
        if path.endswith(path_suffix):
            ok += by_status.get("200", 0)
            refused += by_status.get("429", 0)
            total += sum(by_status.values())
    return ok, refused, total


def _chat_arrivals(stats: dict[str, Any], status: int | None = None) -> list[float]:
    return [
        a["t"]
        for a in stats["arrivals"]
        if a["path"].endswith("/chat/completions") and status in (None, a["status"])
    ]


def _sending_window(stats: dict[str, Any], mean_latency: float, since: float = 0.0) -> float:
    """Seconds from the first chat request's arrival (at or after `since`) to the last
    one's answer."""
    times = [t for t in _chat_arrivals(stats) if t >= since]
    return float(max(times) - min(times) + mean_latency)


@dataclass(frozen=True)
class QuotaCase:
    """One row of the quota benchmark: the server's stream limit, its latency, and how many
    seconds of work at the ceiling the job file holds."""

    limit: int
    base_ms: float
    seconds: float


# Two minutes of work each, a short job for a nightly run (10,000 chat jobs at 10 streams of
# 1 s answers take over 16 minutes). Finding the limit is paid once per run (slow start and
# the one Retry-After pause of its first overload, 1 s on the b2b profile); the bench
# reports that cost in seconds, so the figure for any run length follows from it. The last
# row has a realistic LLM latency.
QUOTA_CASES = (
    QuotaCase(1, 50.0, 120.0),
    QuotaCase(10, 50.0, 120.0),
    QuotaCase(32, 100.0, 120.0),
    QuotaCase(32, 1000.0, 120.0),
)


def bench_quota(workdir: Path, repeat: int, cases: Sequence[QuotaCase] = QUOTA_CASES) -> list[str]:
    """Throughput as a share of two ceilings: limit / configured mean latency (the issue's
    definition) and limit / the mean time the emulator really held a stream for an answered
    request (its own overhead included: sleep overshoot, parsing, serialising); also after
    the discovery (from the end of the last Retry-After window on)."""
    lines = [
        "quota utilisation (chat, --max-concurrency 64, stream limit unknown to the runner, "
        f"median of {repeat})"
    ]
    for case in cases:
        limit = case.limit
        ceiling = limit / (case.base_ms / 1000)
        count = int(ceiling * case.seconds)
        jobs = write_chat_jobs(workdir / f"quota-{limit}-{case.base_ms:g}.jsonl", count)
        rows: dict[str, list[float]] = {
            "configured": [], "served": [], "steady": [], "discovery_s": [], "refused": [],
            "settled": [], "service_ms": [],
        }
        for n in range(repeat):
            cfg = profile(
                "b2b", stream_limit=limit, latency_base_ms=case.base_ms, seed=n,
                **_NO_TOKEN_LATENCY,
            )
            out = workdir / f"quota-{limit}-{case.base_ms:g}-{n}"
            with serve_emulator(cfg, subprocess=True) as emu:
                run = run_cli(jobs, out, emu, "--max-concurrency", "64")
                stats = emu.stats()
            latency, service = stats["mean_latency_s"], stats["mean_service_s"]
            ok, refused, total = _served(stats, "/chat/completions")
            window = _sending_window(stats, latency)
            rate = ok / window
            rows["configured"].append(rate / (limit / latency))
            rows["served"].append(rate / (limit / service))
            # After the discovery: from the end of the last announced window on.
            settled_from = max((w["end"] for w in stats["retry_after_windows"]), default=0.0)
            late = sum(1 for t in _chat_arrivals(stats, 200) if t >= settled_from)
            steady_rate = late / _sending_window(stats, latency, settled_from)
            rows["steady"].append(steady_rate / (limit / latency))
            # What finding the limit cost: the run's time beyond what its answers would
            # have taken at the steady rate.
            rows["discovery_s"].append(window - ok / steady_rate)
            rows["refused"].append(refused / total)
            rows["settled"].append(float(run.summary["concurrency"]["settled"]))
            rows["service_ms"].append(service * 1000)
            shutil.rmtree(out)
        m = {key: statistics.median(values) for key, values in rows.items()}
        lines.append(
            f"  limit {limit:>2}, {case.base_ms:>4g} ms, {count:>6,} jobs: "
            f"{m['configured']:.1%} of limit/configured latency ({ceiling:.0f} req/s; "
            f"runs {min(rows['configured']):.1%}-{max(rows['configured']):.1%}), "
            f"{m['served']:.1%} of limit/served time ({m['service_ms']:.1f} ms), "
            f"{m['steady']:.1%} after discovery, which cost {m['discovery_s']:.1f} s; "
            f"429s {m['refused']:.2%}; "
            f"settled concurrency {m['settled']:g}"
        )
    return lines


def bench_embed(workdir: Path, texts: int, sdk_texts: int) -> list[str]:
    jobs = write_embedding_jobs(workdir / "embed.jsonl", texts)
    cfg = profile("b2b", seed=1)
    with serve_emulator(cfg, subprocess=True) as emu:
        run = run_cli(
            jobs, workdir / "embed-out", emu, "--kind", "embed", "--max-concurrency", "64"
        )
        ours = texts / run.summary["wall_time_s"]
        sample = [
            orjson.loads(line)["text"]
            for line, _ in zip(jobs.open("rb"), range(sdk_texts), strict=False)
        ]
        peer = sdk_embeddings_one_per_request(
            sample,
            base_url=emu.base_url,
            auth_url=emu.auth_url,
            credentials=emu.credentials,
            scope=emu.scope,
            concurrency=10,
        )
    return [
        f"embedding throughput (b2b profile: stream limit 10, "
        f"{cfg.latency_base_ms:g} ms base latency)",
        f"  gigabatch, {texts:,} texts: {ours:,.0f} texts/s "
        f"({run.summary['requests']:,} requests, settled concurrency "
        f"{run.summary['concurrency']['settled']:g})",
        f"  official SDK, one text per request, concurrency 10, {sdk_texts:,} texts: "
        f"{peer.jobs_per_second:,.1f} texts/s",
        f"  ratio: {ours / peer.jobs_per_second:,.1f}x",
    ]


def bench_memory(workdir: Path, small: int, large: int) -> list[str]:
    cfg = profile("b2b", stream_limit=32, latency_base_ms=0.0, seed=1, **_NO_TOKEN_LATENCY)
    rss: dict[int, float] = {}
    with serve_emulator(cfg, subprocess=True) as emu:
        for count in (small, large):
            jobs = write_embedding_jobs(workdir / f"mem-{count}.jsonl", count, words=(4, 12))
            out = workdir / f"mem-{count}-out"
            run = run_cli(jobs, out, emu, "--kind", "embed", "--max-concurrency", "32")
            rss[count] = run.peak_rss_mb
            jobs.unlink()
    return [
        "memory (embedding job, peak RSS of the gigabatch process)",
        f"  {small:,} lines: {rss[small]:.0f} MB; {large:,} lines: {rss[large]:.0f} MB; "
        f"ratio {rss[large] / rss[small]:.2f}x (target <= 1.3x)",
    ]


def bench_cpu(workdir: Path, repeat: int, requests: int) -> list[str]:
    cfg: EmulatorConfig = profile(
        "b2b", stream_limit=32, latency_base_ms=0.0, latency_jitter=0.0, seed=1, **_NO_TOKEN_LATENCY
    )
    small = max(100, requests // 20)
    jobs_small = write_chat_jobs(workdir / "cpu-small.jsonl", small)
    jobs_large = write_chat_jobs(workdir / "cpu-large.jsonl", requests)
    prompts = [orjson.loads(line)["prompt"] for line in jobs_large.open("rb")]
    ours, peers = [], []
    with serve_emulator(cfg, subprocess=True) as emu:
        for n in range(repeat):
            args = ("--max-concurrency", "32")
            base = run_cli(jobs_small, workdir / f"cpu-s-{n}", emu, *args).cpu_seconds
            full = run_cli(jobs_large, workdir / f"cpu-l-{n}", emu, *args).cpu_seconds
            # The difference removes start-up (imports, validation set-up) from the figure.
            ours.append((full - base) / (requests - small) * 1000)
            peer = sdk_chat(
                prompts,
                base_url=emu.base_url,
                auth_url=emu.auth_url,
                credentials=emu.credentials,
                scope=emu.scope,
                concurrency=32,
            )
            peers.append(peer.cpu_seconds / peer.jobs * 1000)
    mine, theirs = statistics.median(ours), statistics.median(peers)
    return [
        f"client cost (chat, zero server latency, concurrency 32, median of {repeat})",
        f"  gigabatch: {mine:.2f} CPU s per 1,000 requests (parsing, checkpointing, Parquet)",
        f"  official SDK, plain asyncio script: {theirs:.2f} CPU s per 1,000 requests",
        f"  ratio: {mine / theirs:.2f}x",
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("which", nargs="*", default=["quota", "embed", "memory", "cpu"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--embed-texts", type=int, default=100_000)
    parser.add_argument("--sdk-texts", type=int, default=2_000)
    parser.add_argument("--memory-lines", type=int, default=1_000_000)
    parser.add_argument("--cpu-requests", type=int, default=5_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gigabatch-bench-") as tmp:
        workdir = Path(tmp)
        for which in args.which:
            if which == "quota":
                lines = bench_quota(workdir, args.repeat)
            elif which == "embed":
                lines = bench_embed(workdir, args.embed_texts, args.sdk_texts)
            elif which == "memory":
                lines = bench_memory(workdir, 10_000, args.memory_lines)
            elif which == "cpu":
                lines = bench_cpu(workdir, args.repeat, args.cpu_requests)
            else:
                parser.error(f"unknown benchmark {which!r}")
            print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
