"""Side by side: gigabatch and what users would pick instead, on the same jobs against the
same emulator (its own process), in one run (issue 16).

    python -m bench.peers [--quick] [--only NAME ...] [--scenarios chat embed ...]
        [--faults KNOB=VALUE,...] [--storm KNOB=VALUE,...]

Prints one table and the issue's goals next to the figures, and writes both (markdown and
JSON) to bench/out/. Every contender runs as its own child process: its CPU is user + sys
from `wait4`, and `kill -9` hits it the same way. The peers are told the stream limit;
gigabatch is not. `--quick` is a smoke test (small files, a few minutes); the default
sizes give figures worth quoting on a quiet machine (about 40 minutes).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from bench.peers.contenders import CONTENDERS, Contender
from bench.peers.report import as_json, goals_text, markdown_table, verdicts
from bench.peers.scenarios import DEFAULT_FAULTS, DEFAULT_STORM, PeerBench, Plan, Throughput

SCENARIOS = ("chat", "embed", "chat_faults", "embed_faults", "storm", "crash")
OUT_DIR = Path(__file__).resolve().parents[1] / "out"
QUICK_NOTE = (
    "quick mode: start-up and finding the stream limit (about 1 s) weigh heavily on these "
    "small files; quote full runs only."
)
PACKAGES = ("gigabatch", "gigachat", "langchain-gigachat", "langchain-core", "ray", "aiohttp",
            "httpx")


def knobs(text: str) -> dict[str, Any]:
    """`fault_5xx=0.01,retry_after=none` -> emulator knobs (numbers parsed as JSON)."""
    found: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"{item!r}: expected KNOB=VALUE")
        try:
            found[name.strip()] = orjson.loads(value)
        except orjson.JSONDecodeError:
            found[name.strip()] = value.strip()
    return found


def _versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peers", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--quick", action="store_true", help="small files: a smoke test")
    parser.add_argument("--chat-jobs", type=int, help="chat jobs (600; quick 80)")
    parser.add_argument("--embed-jobs", type=int, help="texts to embed (30,000; quick 640)")
    parser.add_argument("--chat-latency-ms", type=float,
                        help="chat base latency, ms (1000; quick 200), plus 2 ms a token")
    parser.add_argument("--limit", type=int, default=10, help="the server's stream limit")
    parser.add_argument("--faults", type=knobs, default=DEFAULT_FAULTS,
                        help="emulator knobs of the fault scenario (default: 1%% mixed)")
    parser.add_argument("--storm", type=knobs, help="emulator knobs of the 429 storm")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="contenders to run")
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    return parser


def plan_from(args: argparse.Namespace) -> Plan:
    quick = args.quick
    quick_storm = {"fault_storm": 0.03, "storm_s": 1.0} if quick else {}
    storm = args.storm or {**DEFAULT_STORM, **quick_storm}
    return Plan(
        chat_jobs=args.chat_jobs or (80 if quick else 600),
        embed_jobs=args.embed_jobs or (640 if quick else 30_000),
        chat_latency_ms=args.chat_latency_ms or (200.0 if quick else 1000.0),
        limit=args.limit,
        faults=args.faults,
        storm=storm,
    )


def run_scenario(
    bench: PeerBench, who: Contender, scenario: str, results: dict[str, dict[str, Any]]
) -> Any:
    """The figures of one scenario for `who` (the crash reuses its clean chat pass)."""
    if scenario in ("chat", "embed"):
        return bench.throughput(who, scenario)
    if scenario in ("chat_faults", "embed_faults"):
        return bench.faults(who, scenario.split("_")[0])
    if scenario == "storm":
        return bench.storm(who)
    clean: Throughput | None = results.get("chat", {}).get(who.name)
    return bench.crash(who, clean.tokens if clean else bench.throughput(who, "chat").tokens)


def run_all(
    bench: PeerBench, contenders: Sequence[Contender], scenarios: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Every scenario for every contender that can run; scenario -> name -> figures."""
    results: dict[str, dict[str, Any]] = {s: {} for s in scenarios}
    for who in contenders:
        if who.not_run():
            continue
        print(f"{who.name}:", file=sys.stderr)
        for scenario in scenarios:
            started = time.perf_counter()
            figures = results[scenario][who.name] = run_scenario(bench, who, scenario, results)
            print(f"  {scenario}: {time.perf_counter() - started:.1f} s", file=sys.stderr,
                  flush=True)
            if figures.run.exit_code:
                print(f"    exit {figures.run.exit_code}: ...{figures.run.stderr_tail[-300:]}",
                      file=sys.stderr)
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    names = [c.name for c in CONTENDERS]
    unknown = sorted(set(args.only or ()) - set(names))
    if unknown:
        parser.error(f"unknown contender(s) {', '.join(unknown)}; choose from {', '.join(names)}")
    plan = plan_from(args)
    try:  # a mistyped knob fails here, not after the first contenders have run
        plan.emulator("chat", plan.faults)
        plan.emulator("chat", plan.storm)
    except ValueError as exc:
        parser.error(str(exc))
    contenders = [c for c in CONTENDERS if not args.only or c.name in args.only]
    meta = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "python": platform.python_version(),
        "mode": "quick" if args.quick else "full",
    }
    with tempfile.TemporaryDirectory(prefix="gigabatch-peers-") as tmp:
        bench = PeerBench(Path(tmp), plan)
        # The naive SDK script runs last: its runs are the longest by far (one text per
        # request) and, waiting on the server, the least disturbed by other work on the host.
        in_order = sorted(contenders, key=lambda c: c.name == "SDK naive")
        results = run_all(bench, in_order, args.scenarios)
    found = verdicts(results, plan.limit)
    versions = _versions()
    text = "\n\n".join([
        f"peers benchmark ({meta['mode']}), {meta['date']}; {meta['machine']}; "
        f"Python {meta['python']}; " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"chat: {plan.chat_jobs:,} jobs, {plan.chat_latency_ms:g} ms base latency; embed: "
        f"{plan.embed_jobs:,} texts; stream limit {plan.limit}; faults {plan.faults}; "
        f"storm {plan.storm}",
        markdown_table(contenders, results),
        "goals (issue 16):\n" + goals_text(found),
        *([QUICK_NOTE] if args.quick else []),
    ])
    print(text)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    stem = OUT_DIR / f"peers-{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}"
    stem.with_suffix(".md").write_text(text + "\n", encoding="utf-8")
    document = {
        "meta": {**meta, "versions": versions}, "plan": plan.__dict__, "results": as_json(results),
        "goals": [{"goal": v.goal, "figure": v.figure, "met": v.met} for v in found],
    }
    stem.with_suffix(".json").write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    print(f"\nwritten: {stem}.md, {stem}.json", file=sys.stderr)


if __name__ == "__main__":
    main()
