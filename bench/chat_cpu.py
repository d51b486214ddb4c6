"""Chat CPU per job at realistic latency, quickly: gigabatch beside the SDK expert script.

    python -m bench.chat_cpu [--jobs 300] [--latency-ms 1000] [--repeats 3] [--idle-s 10]

The chat case of `python -m bench.peers` (stream limit 10, base latency plus 2 ms a token,
CPU per 1,000 jobs of the whole process with a prefix run's start-up taken off), on a few
hundred jobs, the two contenders alternating, then the medians and their ratio. Then each
one's *idle* CPU per second: a run whose requests all take `--idle-latency-s`, its CPU
sampled while every request is still waiting, which is the periodic work (timers, flushes,
repaints) apart from the work of answers.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from batch.emulator import serve_emulator
from bench.jobgen import write_chat_jobs
from bench.peers.contenders import CONTENDERS, Contender
from bench.peers.measure import requests_by_status
from bench.peers.scenarios import PeerBench, Plan, _env

NAMES = ("gigabatch", "SDK expert")


@dataclass(frozen=True)
class Floor(Contender):
    """`scripts/floor_chat.py` in one of its modes: the floor under gigabatch's CPU."""

    mode: str = "httpx"

    def command(self, kind: str, jobs: Path, out: Path, limit: int) -> list[str]:
        return [*super().command(kind, jobs, out, limit), self.mode]


FLOORS = (
    Floor("floor: httpx", {"chat": "floor_chat.py"}, mode="httpx"),
    Floor("floor: GigaChatClient", {"chat": "floor_chat.py"}, mode="client"),
)
IDLE_JOBS = 10
STEADY_WINDOW = (0.2, 0.9)  # shares of the jobs answered between the two CPU samples
POLL_S = 0.05


def cpu_passes(workdir: Path, plan: Plan, who: Sequence[Contender],
               repeats: int) -> dict[str, list[float]]:
    """CPU-s per 1,000 jobs of each pass, the contenders alternating so drift hits both.
    Each pass has its own directory: a pass into a used one would resume, sending nothing."""
    found: dict[str, list[float]] = {c.name: [] for c in who}
    for n in range(repeats):
        (workdir / f"pass-{n + 1}").mkdir()
        bench = PeerBench(workdir / f"pass-{n + 1}", plan)
        for contender in who:
            figures = bench.throughput(contender, "chat")
            found[contender.name].append(figures.cpu_per_1000)
            print(f"  pass {n + 1} {contender.name}: {figures.cpu_per_1000:.2f} CPU-s/1k, "
                  f"{figures.jobs_per_s:.1f} jobs/s, {figures.run.answered} answered, "
                  f"exit {figures.run.exit_code}", file=sys.stderr, flush=True)
    return found


def _tree_cpu(process: psutil.Process) -> float:
    """User + sys CPU-s of `process` and its live descendants."""
    total = 0.0
    for each in (process, *process.children(recursive=True)):
        try:
            times = each.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def steady_cpu_per_1000(who: Contender, workdir: Path, plan: Plan,
                        window: tuple[float, float] = STEADY_WINDOW) -> float:
    """CPU-s per 1,000 answers of `who` in its steady state: its CPU sampled when the
    emulator has answered `window[0]` and then `window[1]` of the jobs, so start-up, the
    first round trips and the end of the run are left out (no prefix run to subtract)."""
    jobs = write_chat_jobs(workdir / "steady.jsonl", plan.chat_jobs)
    out = workdir / "steady" / who.name.replace(" ", "-")
    marks = [round(share * plan.chat_jobs) for share in window]
    with serve_emulator(plan.emulator("chat"), subprocess=True) as emu:
        env = {**_env(emu), "GIGABATCH_CACHE_DIR": str(out.with_name(out.name + "-cache"))}
        child = subprocess.Popen(who.command("chat", jobs, out, plan.limit), env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            process = psutil.Process(child.pid)
            taken: list[tuple[int, float]] = []
            while len(taken) < len(marks):
                if child.poll() is not None:
                    raise RuntimeError(f"{who.name} exited {child.returncode} too early")
                answered = requests_by_status(emu.stats(arrivals=False), "chat").get("200", 0)
                if answered >= marks[len(taken)]:
                    taken.append((answered, _tree_cpu(process)))
                time.sleep(POLL_S)
            child.wait(timeout=plan.timeout_s)
        finally:
            child.kill()
            child.wait()
    (first, cpu_first), (last, cpu_last) = taken
    return (cpu_last - cpu_first) / (last - first) * 1000


def idle_cpu_per_s(who: Contender, workdir: Path, plan: Plan, latency_s: float,
                   idle_s: float) -> float:
    """CPU-s per second of `who` while all its requests wait on a server that answers
    after `latency_s`: sampled from 1 s after the first request arrived, for `idle_s`."""
    if idle_s + 2 >= latency_s:
        raise ValueError(f"--idle-s {idle_s:g} must end before the first answer ({latency_s:g} s)")
    jobs = write_chat_jobs(workdir / "idle.jsonl", IDLE_JOBS)
    out = workdir / "idle" / who.name.replace(" ", "-")
    config = plan.emulator("chat", {"latency_base_ms": latency_s * 1000})
    with serve_emulator(config, subprocess=True) as emu:
        env = {**_env(emu), "GIGABATCH_CACHE_DIR": str(out.with_name(out.name + "-cache"))}
        child = subprocess.Popen(who.command("chat", jobs, out, plan.limit), env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            process = psutil.Process(child.pid)
            while not any(a["path"].endswith("/chat/completions")
                          for a in emu.stats()["arrivals"]):
                if child.poll() is not None:
                    raise RuntimeError(f"{who.name} exited {child.returncode} before sending")
                time.sleep(POLL_S)
            time.sleep(1.0)
            before = _tree_cpu(process)
            time.sleep(idle_s)
            after = _tree_cpu(process)
        finally:
            child.kill()
            child.wait()
    return (after - before) / idle_s


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.chat_cpu",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=300, help="chat jobs per pass (300)")
    parser.add_argument("--latency-ms", type=float, default=1000.0,
                        help="base latency, ms (1000), plus 2 ms a token")
    parser.add_argument("--limit", type=int, default=10, help="the server's stream limit")
    parser.add_argument("--repeats", type=int, default=3, help="passes per contender (3)")
    parser.add_argument("--idle-latency-s", type=float, default=20.0,
                        help="latency of the idle run, s (20)")
    parser.add_argument("--idle-s", type=float, default=10.0,
                        help="seconds of idle CPU sampled (10; 0: no idle run)")
    parser.add_argument("--only", nargs="+", choices=NAMES, default=list(NAMES))
    parser.add_argument("--floors", action="store_true",
                        help="also the floors in the steady state (scripts/floor_chat.py)")
    parser.add_argument("--steady-only", action="store_true",
                        help="no whole-run passes (the steady state is the steadier figure)")
    parser.add_argument("--no-passes", action="store_true", help="the idle runs alone")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    who = [c for c in CONTENDERS if c.name in args.only]
    plan = Plan(chat_jobs=args.jobs, embed_jobs=10, chat_latency_ms=args.latency_ms,
                limit=args.limit)
    lines = [f"chat CPU: {args.jobs} jobs, {args.latency_ms:g} ms base latency + 2 ms/token, "
             f"stream limit {args.limit}, {args.repeats} passes each; the machine may be shared"]
    with tempfile.TemporaryDirectory(prefix="gigabatch-chat-cpu-") as tmp:
        workdir = Path(tmp)
        if not args.no_passes:
            if not args.steady_only:
                lines += _medians("whole run, start-up (a prefix run) taken off",
                                  cpu_passes(workdir, plan, who, args.repeats))
            measured = [*who, *(FLOORS if args.floors else ())]
            steady: dict[str, list[float]] = {c.name: [] for c in measured}
            for n in range(args.repeats):
                for contender in measured:
                    (workdir / f"steady-{n}").mkdir(exist_ok=True)
                    figure = steady_cpu_per_1000(contender, workdir / f"steady-{n}", plan)
                    steady[contender.name].append(figure)
                    print(f"  steady {n + 1} {contender.name}: {figure:.2f} CPU-s/1k",
                          file=sys.stderr, flush=True)
            lines += _medians(f"steady state, {STEADY_WINDOW[0]:.0%}-{STEADY_WINDOW[1]:.0%} "
                              "of the jobs answered", steady)
        if args.idle_s:
            for contender in who:
                idle = idle_cpu_per_s(contender, workdir, plan, args.idle_latency_s, args.idle_s)
                lines.append(f"  {contender.name} idle: {idle * 1000:.1f} CPU-ms per second "
                             f"({IDLE_JOBS} requests waiting {args.idle_latency_s:g} s)")
    print("\n".join(lines))


def _medians(title: str, figures: dict[str, list[float]]) -> list[str]:
    """Lines of each contender's median (and every pass), and gigabatch's ratio."""
    lines = [f"CPU-s per 1,000 jobs, {title}:"]
    medians = {name: statistics.median(found) for name, found in figures.items() if found}
    for name, median in medians.items():
        shown = ", ".join(f"{f:.2f}" for f in figures[name])
        lines.append(f"  {name}: median {median:.2f} ({shown})")
    if "gigabatch" in medians and medians.get("SDK expert", 0) > 0:
        ratio = medians["gigabatch"] / medians["SDK expert"]
        lines.append(f"  ratio gigabatch / SDK expert: {ratio:.2f}x (goal <= 0.6x)")
    return lines


if __name__ == "__main__":
    main()
