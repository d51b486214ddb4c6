"""The peer benchmark's table and its goals: pure functions from the figures to markdown
and JSON, so the harness prints what it measured and says where a goal is missed."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench.peers.contenders import GIGABATCH, Contender
from bench.peers.scenarios import CrashRun, FaultRun, StormRun, Throughput

# scenario -> contender name -> its figures. Scenarios: chat, embed (clean passes),
# chat_faults, embed_faults, storm, crash.
Results = Mapping[str, Mapping[str, Any]]

COLUMNS = (
    "peer",
    "chat jobs/s",
    "chat CPU s/1k jobs",
    "embed jobs/s",
    "embed CPU s/1k jobs",
    "chat with faults: answered / lost, wall",
    "embed with faults: answered / lost, wall",
    "429 storm: requests inside Retry-After windows",
    "kill -9 + re-run: tokens × clean pass, duplicate rows",
    "user code lines (chat / embed)",
)


@dataclass(frozen=True)
class Verdict:
    """One goal of the issue, the figure it is judged on, and whether it was met."""

    goal: str
    figure: str
    met: bool | None  # None: not measured in this run

    @property
    def label(self) -> str:
        return {True: "met", False: "MISSED", None: "not measured"}[self.met]


def _faults_cell(fig: FaultRun | None) -> str:
    if fig is None:
        return "—"
    run = fig.run
    return f"{run.answered:,} / {run.lost:,}, {run.wall_s:.1f} s"


def _storm_cell(fig: StormRun | None) -> str:
    if fig is None:
        return "—"
    if not fig.windows:
        return "no storm started"
    return f"{fig.inside:,} (in {fig.windows} windows; {fig.run.lost} lost)"


def _crash_cell(fig: CrashRun | None) -> str:
    if fig is None:
        return "—"
    killed = "" if fig.killed else " (ended before the kill)"
    return (
        f"{fig.billed_ratio:.2f}× ({fig.repaid_jobs:,} jobs re-paid; the killed run paid "
        f"{fig.paid_before_kill:,}, kept {fig.kept_after_kill:,}), "
        f"{fig.run.duplicates:,} duplicate rows{killed}"
    )


def row(who: Contender, results: Results) -> list[str]:
    """One table row; a contender that was not run says why."""
    reason = who.not_run()
    if reason:
        return [who.name, reason, *["—"] * (len(COLUMNS) - 2)]

    def get(scenario: str) -> Any:
        return results.get(scenario, {}).get(who.name)

    def rate(kind: str) -> str:
        fig: Throughput | None = get(kind)
        return "—" if fig is None else f"{fig.jobs_per_s:,.1f}"

    def cpu(kind: str) -> str:
        fig: Throughput | None = get(kind)
        return "—" if fig is None else f"{fig.cpu_per_1000:.2f}"

    lines = [who.user_lines(kind) for kind in ("chat", "embed")]
    told = "" if who.name == GIGABATCH else " (told the limit)"
    return [
        who.name + told,
        rate("chat"), cpu("chat"), rate("embed"), cpu("embed"),
        _faults_cell(get("chat_faults")), _faults_cell(get("embed_faults")),
        _storm_cell(get("storm")), _crash_cell(get("crash")),
        " / ".join("—" if n is None else str(n) for n in lines),
    ]


def markdown_table(contenders: Sequence[Contender], results: Results) -> str:
    """The whole table: a row per contender, the ones not run included."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row(who, results)) + " |" for who in contenders]
    return "\n".join(lines)


def _peers(results: Results, scenario: str) -> dict[str, Any]:
    return {n: f for n, f in results.get(scenario, {}).items() if n != GIGABATCH}


def _throughput_goal(results: Results, kind: str) -> Verdict:
    goal = f"{kind} throughput ≥ 1.0× the best peer's"
    ours: Throughput | None = results.get(kind, {}).get(GIGABATCH)
    peers = _peers(results, kind)
    if ours is None or not peers:
        return Verdict(goal, "—", None)
    best = max(peers, key=lambda n: peers[n].jobs_per_s)
    ratio = ours.jobs_per_s / peers[best].jobs_per_s if peers[best].jobs_per_s else 0.0
    return Verdict(goal, f"{ratio:.2f}× {best}", ratio >= 1.0)


def _cpu_goal(results: Results, kind: str) -> Verdict:
    goal = f"{kind} CPU ≤ 0.6× the SDK scripts'"
    ours: Throughput | None = results.get(kind, {}).get(GIGABATCH)
    sdk = {n: f for n, f in _peers(results, kind).items() if n.startswith("SDK")}
    if ours is None or not sdk:
        return Verdict(goal, "—", None)
    if ours.cpu_per_1000 <= 0 or any(f.cpu_per_1000 <= 0 for f in sdk.values()):
        return Verdict(goal, "too few jobs: start-up hides the per-job CPU", None)
    ratios = {n: ours.cpu_per_1000 / f.cpu_per_1000 for n, f in sdk.items()}
    figure = ", ".join(f"{r:.2f}× {n}" for n, r in ratios.items())
    return Verdict(goal, figure, all(r <= 0.6 for r in ratios.values()))


def _only_one(
    goal: str, results: Results, scenarios: Sequence[str], ok: Callable[[Any], bool],
    describe: Callable[[Any], str],
) -> Verdict:
    """gigabatch must pass `ok` in every scenario, and no peer in all of them."""
    measured = [s for s in scenarios if GIGABATCH in results.get(s, {})]
    if not measured:
        return Verdict(goal, "—", None)
    ours_ok = all(ok(results[s][GIGABATCH]) for s in measured)
    figure = "gigabatch " + "; ".join(f"{s}: {describe(results[s][GIGABATCH])}" for s in measured)
    names = {n for s in measured for n in _peers(results, s)}
    also = sorted(n for n in names if all(ok(results[s][n]) for s in measured
                                          if n in results[s]))
    if also:
        figure += f"; not the only one: {', '.join(also)} also"
    return Verdict(goal, figure, ours_ok and not also)


def verdicts(results: Results, limit: int) -> list[Verdict]:
    """Every goal of the issue with the figure it is judged on."""

    def no_loss(f: FaultRun) -> bool:
        return f.run.lost == 0

    def no_window(f: StormRun) -> bool:
        return f.windows > 0 and f.inside == 0

    def clean_resume(f: CrashRun) -> bool:
        return f.run.duplicates == 0 and f.repaid_jobs <= limit and f.run.lost == 0

    return [
        _throughput_goal(results, "chat"),
        _throughput_goal(results, "embed"),
        _cpu_goal(results, "chat"),
        _cpu_goal(results, "embed"),
        _only_one("under faults, the only one with zero lost jobs", results,
                  ("chat_faults", "embed_faults"), no_loss,
                  lambda f: f"{f.run.lost} lost"),
        _only_one("in a 429 storm, the only one with zero requests inside a Retry-After "
                  "window", results, ("storm",), no_window,
                  lambda f: f"{f.inside} inside {f.windows} windows"),
        _only_one(f"after kill -9, the only one with no duplicate rows and no more re-paid "
                  f"than the requests in flight (≤ {limit})", results, ("crash",),
                  clean_resume,
                  lambda f: f"{f.run.duplicates} duplicate rows, {f.repaid_jobs} jobs re-paid"),
    ]


def goals_text(found: Sequence[Verdict]) -> str:
    """The goals as a list, each labelled met, MISSED or not measured."""
    return "\n".join(f"- {v.label}: {v.goal} — {v.figure}" for v in found)


def as_json(results: Results) -> dict[str, dict[str, Any]]:
    """The figures as plain JSON values."""
    return {
        scenario: {name: dataclasses.asdict(fig) for name, fig in by_name.items()}
        for scenario, by_name in results.items()
    }

