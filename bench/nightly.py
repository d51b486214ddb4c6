"""Nightly runs with the answer cache (issue 11), each figure a median over `--repeat` runs.

    python -m bench.nightly [nightly] [overhead] [memory] [kills] [--texts N] [--repeat R]

- nightly:  night one embeds N texts into a fresh cache; night two (1% new, 0.5% changed
            texts, into a new --out) against the 1.5% delta alone in a fresh cache: billed
            tokens (the emulator's count) and wall time.
- overhead: night one with an empty cache (0% hits: every text looked up and stored)
            against --no-cache, runs alternated.
- memory:   peak RSS of a run of N new texts with a cache already holding N answers, against
            --no-cache: anonymous and file-backed pages apart (LMDB's map is file-backed).
- kills:    tokens billed over 10 kill -9s and a resume, against a clean run: embeddings
            (the cache is the journal) and chat without --cache (DIR/journal.sqlite3).

The runner is the real CLI in a child process; the emulator runs in another process
(`b2b` profile: stream limit 10, 100 ms base latency).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from batch.emulator import RunningEmulator, profile, serve_emulator
from bench.jobgen import write_chat_jobs

_EMBED = ("--kind", "embed", "--max-concurrency", "32")


@dataclass(frozen=True)
class Leg:
    wall_s: float  # the process, start to exit (interpreter start included)
    run_s: float  # the run itself (summary.json's wall_time_s)
    cpu_s: float  # the process's CPU time (user + system): steadier than wall on a busy host
    billed: int  # tokens the emulator billed while the run went
    rss_anon_mb: float
    rss_file_mb: float


def texts(n: int, night: int = 1, *, changed: frozenset[int] = frozenset()) -> dict[str, str]:
    """`n` distinct texts of 10-40 words; those in `changed` are rewritten for `night`."""
    rng = random.Random(11)
    words = [
        "данные",
        "модель",
        "запрос",
        "ответ",
        "поток",
        "очередь",
        "корпус",
        "отчёт",
        "vector",
        "stream",
        "night",
    ]
    out = {}
    for i in range(n):
        text = f"{i} " + " ".join(rng.choice(words) for _ in range(rng.randint(10, 40)))
        out[f"t{i}"] = f"{text} (edited on night {night})" if i in changed else text
    return out


def write(path: Path, corpus: dict[str, str]) -> Path:
    with path.open("wb") as f:
        for job_id, text in corpus.items():
            f.write(orjson.dumps({"id": job_id, "text": text}) + b"\n")
    return path


def billed(emu: RunningEmulator) -> int:
    tokens = emu.stats(arrivals=False)["tokens"]
    return int(tokens["embedding"] + tokens["prompt"] + tokens["completion"])


class _RssWatch(threading.Thread):
    """The highest RssAnon and RssFile of a process, read from /proc every 20 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.path = Path(f"/proc/{pid}/status")
        self.peak = {"RssAnon": 0, "RssFile": 0}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            try:
                lines = self.path.read_text().splitlines()
            except OSError:
                return
            for line in lines:
                name, _, value = line.partition(":")
                if name in self.peak:
                    self.peak[name] = max(self.peak[name], int(value.split()[0]))


def start(emu: RunningEmulator, cache: Path, jobs: Path, out: Path, *args: str) -> Any:
    env = {**os.environ, **emu.client_env(), "GIGABATCH_CACHE_DIR": str(cache)}
    cmd = [sys.executable, "-m", "batch", "run", str(jobs), "--out", str(out), "--quiet", *args]
    return subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE)


def run(emu: RunningEmulator, cache: Path, jobs: Path, out: Path, *args: str) -> Leg:
    """One run to its end: wall time, tokens billed, peak anonymous and file-backed RSS."""
    emu.reset_stats()
    began = time.monotonic()
    child = start(emu, cache, jobs, out, *args)
    watch = _RssWatch(child.pid)
    watch.start()
    err = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = code = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - began
    watch.done.set()
    if code not in (0, 3):
        raise RuntimeError(f"gigabatch exited {code}: {err.decode()[-2000:]}")
    run_s = float(orjson.loads((out / "summary.json").read_bytes())["wall_time_s"])
    peak = watch.peak
    cpu = usage.ru_utime + usage.ru_stime
    return Leg(wall, run_s, cpu, billed(emu), peak["RssAnon"] / 1024, peak["RssFile"] / 1024)


def median(values: list[float]) -> float:
    return statistics.median(values)


@dataclass(frozen=True)
class Floor:
    wall_s: float  # the process, less the reading of the rows to write
    parse_s: float
    write_s: float


def floor(jobs: Path, done: Path, out: Path) -> Floor:
    """`bench.nightly_floor` in a fresh process: start, parse the input once, write `done`'s
    rows (the reading of those rows left out)."""
    began = time.monotonic()
    child = subprocess.run(
        [sys.executable, "-m", "bench.nightly_floor", str(jobs), str(done), str(out)],
        check=True,
        capture_output=True,
    )
    wall = time.monotonic() - began
    timings = orjson.loads(child.stdout)
    return Floor(wall - timings["read_rows_s"], timings["parse_s"], timings["write_s"])


def bench_nightly(work: Path, n: int, repeat: int) -> list[str]:
    new, changed = n // 100, n // 200
    night1 = texts(n)
    night2 = texts(n, night=2, changed=frozenset(range(changed)))
    night2.update({f"new{i}": f"a text new on night two, number {i}" for i in range(new)})
    delta = {k: night2[k] for k in night2 if k not in night1 or night1[k] != night2[k]}
    files = {
        name: write(work / f"{name}.jsonl", c)
        for name, c in (("night1", night1), ("night2", night2), ("delta", delta))
    }
    one, two, since, alone, floors = [], [], [], [], []
    with serve_emulator(profile("b2b", seed=1), subprocess=True) as emu:
        for r in range(repeat):
            cache, delta_cache = work / f"cache-{r}", work / f"delta-cache-{r}"
            one.append(run(emu, cache, files["night1"], work / f"n1-{r}", *_EMBED))
            # The nightly recipe writes only what changed; a plain new --out writes every row.
            # Each night two starts from the cache night one left (a copy for this one).
            shutil.copytree(cache, work / f"since-cache-{r}")
            since.append(
                run(
                    emu,
                    work / f"since-cache-{r}",
                    files["night2"],
                    work / f"s-{r}",
                    *_EMBED,
                    "--changed-since",
                    str(work / f"n1-{r}"),
                )
            )
            two.append(run(emu, cache, files["night2"], work / f"n2-{r}", *_EMBED))
            alone.append(run(emu, delta_cache, files["delta"], work / f"d-{r}", *_EMBED))
            floors.append(floor(files["night2"], work / f"n2-{r}", work / f"floor-{r}"))
    ratio = median([b.billed / a.billed for a, b in zip(alone, two, strict=True)])
    speed = median([a.wall_s / b.wall_s for a, b in zip(one, two, strict=True)])
    run_speed = median([a.run_s / b.run_s for a, b in zip(one, two, strict=True)])
    return [
        f"nightly: {n:,} texts, night two with {new:,} new and {changed:,} changed "
        f"({len(delta):,} delta), medians of {repeat}",
        f"  night one: {median([x.wall_s for x in one]):.1f} s "
        f"(the run {median([x.run_s for x in one]):.1f} s), "
        f"{median([x.billed for x in one]):,.0f} tokens billed",
        f"  night two: {median([x.wall_s for x in two]):.2f} s "
        f"(the run {median([x.run_s for x in two]):.2f} s), "
        f"{median([x.billed for x in two]):,.0f} tokens billed; the delta alone: "
        f"{median([x.billed for x in alone]):,.0f} tokens",
        f"  billed tokens, night two / the delta alone: {ratio:.3f}x (target <= 1.05x)",
        f"  wall time, night one / night two: {speed:.1f}x for the process, {run_speed:.1f}x "
        "for the run (target >= 20x)",
        f"  CPU time of the process, night one / night two: "
        f"{median([a.cpu_s / b.cpu_s for a, b in zip(one, two, strict=True)]):.1f}x "
        f"({median([x.cpu_s for x in one]):.1f} s and {median([x.cpu_s for x in two]):.1f} s)",
        f"  night two with --changed-since (writes the {len(delta):,} changed rows only): "
        f"{median([x.wall_s for x in since]):.2f} s (the run {median([x.run_s for x in since]):.2f}"
        f" s), {median([a.wall_s / b.wall_s for a, b in zip(one, since, strict=True)]):.1f}x "
        f"faster than night one; {median([x.billed for x in since]):,.0f} tokens billed",
        f"  the floor, pyarrow alone (start, parse night two's input once, write its "
        f"{n + new:,} rows as the run does): {median([x.wall_s for x in floors]):.2f} s "
        f"(parse {median([x.parse_s for x in floors]):.2f} s, write "
        f"{median([x.write_s for x in floors]):.2f} s): night one / the floor "
        f"{median([a.wall_s / f.wall_s for a, f in zip(one, floors, strict=True)]):.1f}x",
        f"  night two / the floor: "
        f"{median([b.wall_s / f.wall_s for b, f in zip(two, floors, strict=True)]):.2f}x",
        f"  cache hits through the whole run (read, look up, write): "
        f"{median([(n - len(delta) + new) / x.run_s for x in two]):,.0f} jobs/s",
    ]


def bench_overhead(work: Path, n: int, repeat: int) -> list[str]:
    jobs = write(work / "overhead.jsonl", texts(n, night=3))
    cached: list[Leg] = []
    plain: list[Leg] = []
    with serve_emulator(profile("b2b", seed=1), subprocess=True) as emu:
        for r in range(repeat):
            plain.append(run(emu, work / "unused", jobs, work / f"p-{r}", *_EMBED, "--no-cache"))
            cached.append(run(emu, work / f"oc-{r}", jobs, work / f"c-{r}", *_EMBED))

    def overhead(measure: Callable[[Leg], float]) -> str:
        ratios = [measure(c) / measure(p) for c, p in zip(cached, plain, strict=True)]
        return (
            f"{median([measure(x) for x in plain]):.2f} s without, "
            f"{median([measure(x) for x in cached]):.2f} s with: "
            f"{(median(ratios) - 1) * 100:+.1f}% (pairs: "
            + ", ".join(f"{(x - 1) * 100:+.1f}%" for x in ratios)
            + ")"
        )

    return [
        f"cache overhead at 0% hits: {n:,} texts, --no-cache vs an empty cache, runs "
        f"alternated, medians of {repeat} (target <= +2%)",
        f"  CPU time of the process: {overhead(lambda x: x.cpu_s)}",
        f"  wall time of the run: {overhead(lambda x: x.run_s)}",
    ]


def bench_memory(work: Path, n: int, repeat: int) -> list[str]:
    fill = write(work / "fill.jsonl", texts(n, night=4))
    jobs = write(work / "big.jsonl", texts(n, night=5, changed=frozenset(range(n))))
    cache = work / "big-cache"
    with_cache: list[Leg] = []
    without: list[Leg] = []
    fast = profile(
        "b2b", stream_limit=32, latency_base_ms=0.0, seed=1, latency_per_prompt_token_ms=0.0
    )
    with serve_emulator(fast, subprocess=True) as emu:
        run(emu, cache, fill, work / "fill-out", *_EMBED)
        for r in range(repeat):
            # Every text is new: each one is looked up (a miss) and then stored, in a copy of
            # the filled cache so that every repeat starts from the same one.
            copy = work / f"big-cache-{r}"
            shutil.copytree(cache, copy)
            with_cache.append(run(emu, copy, jobs, work / f"m-{r}", *_EMBED))
            shutil.rmtree(copy)
            shutil.rmtree(work / f"m-{r}")
            without.append(run(emu, cache, jobs, work / f"w-{r}", *_EMBED, "--no-cache"))
            shutil.rmtree(work / f"w-{r}")
    size = sum(p.stat().st_size for p in (cache / "answers.lmdb").iterdir()) / 2**20
    anon = (median([x.rss_anon_mb for x in with_cache]), median([x.rss_anon_mb for x in without]))
    file = (median([x.rss_file_mb for x in with_cache]), median([x.rss_file_mb for x in without]))
    return [
        f"memory: a run of {n:,} new texts with a cache holding {n:,}+ answers "
        f"({size:,.0f} MiB on disk) vs --no-cache, peak RSS, medians of {repeat}",
        f"  anonymous: {anon[0]:.0f} MB with the cache, {anon[1]:.0f} MB without "
        f"({anon[0] - anon[1]:+.0f} MB; target <= +50 MB)",
        f"  file-backed: {file[0]:.0f} MB with the cache, {file[1]:.0f} MB without "
        f"({file[0] - file[1]:+.0f} MB: LMDB's mapped pages, the kernel's to drop)",
    ]


def killed(emu: RunningEmulator, cache: Path, jobs: Path, out: Path, kills: int, *args: str) -> int:
    """Tokens billed by `kills` legs each killed at a random moment, then a last leg."""
    rng = random.Random(3)
    total = 0
    for _ in range(kills):
        emu.reset_stats()
        child = start(emu, cache, jobs, out, *args)
        while not (out / "events.bin").exists() and child.poll() is None:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.3, 1.5))
        child.send_signal(signal.SIGKILL)
        child.communicate()
        total += billed(emu)
    return total + run(emu, cache, jobs, out, *args).billed


def bench_kills(work: Path, n: int, repeat: int, kills: int = 10) -> list[str]:
    embed_jobs = write(work / "kill-embed.jsonl", texts(n, night=6))
    chat_jobs = write_chat_jobs(work / "kill-chat.jsonl", max(500, n // 10))
    lines = [f"resume after {kills} kill -9s: tokens billed / a clean run's, medians of {repeat}"]
    cases: list[tuple[str, Path, tuple[str, ...]]] = [
        ("embeddings (the cache is the journal)", embed_jobs, _EMBED),
        ("chat without --cache (the journal)", chat_jobs, ("--max-concurrency", "32")),
    ]
    with serve_emulator(profile("b2b", seed=1), subprocess=True) as emu:
        for name, jobs, args in cases:
            ratios = []
            for r in range(repeat):
                clean = run(
                    emu, work / f"kc-{r}-{jobs.stem}", jobs, work / f"kc-{r}-{jobs.stem}-o", *args
                ).billed
                paid = killed(
                    emu,
                    work / f"kk-{r}-{jobs.stem}",
                    jobs,
                    work / f"kk-{r}-{jobs.stem}-o",
                    kills,
                    *args,
                )
                ratios.append(paid / clean)
            lines.append(
                f"  {name}: {median(ratios):.3f}x (target <= 1.10x; runs: "
                + ", ".join(f"{x:.3f}" for x in ratios)
                + ")"
            )
    return lines


BENCHES: dict[str, Callable[[Path, int, int], list[str]]] = {
    "nightly": bench_nightly,
    "overhead": bench_overhead,
    "memory": bench_memory,
    "kills": bench_kills,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("benches", nargs="*", help=f"any of {', '.join(BENCHES)} (default: all)")
    parser.add_argument("--texts", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    unknown = set(args.benches) - set(BENCHES)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    for name in args.benches or list(BENCHES):
        with tempfile.TemporaryDirectory(prefix=f"gigabatch-{name}-") as tmp:
            print("\n".join(BENCHES[name](Path(tmp), args.texts, args.repeat)), flush=True)


if __name__ == "__main__":
    main()
