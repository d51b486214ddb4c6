"""The scenarios of the peer benchmark, each run for one contender against a fresh emulator
in its own process: a clean pass (throughput, CPU), the same with faults, a 429 storm with
Retry-After, and `kill -9` halfway followed by a re-run."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from batch.emulator import EmulatorConfig, RunningEmulator, profile, serve_emulator
from bench.jobgen import write_chat_jobs, write_embedding_jobs
from bench.peers.child import ChildRun, run_child
from bench.peers.contenders import Contender
from bench.peers.measure import (
    billed_tokens,
    duplicated_rows,
    inside_windows,
    output_ids,
    requests_by_status,
    sending_window,
    taken_on,
)

# 1% of requests fail, spread over the faults the issue names. The emulator has no isolated
# "429 without Retry-After" yet: a 1 ms storm with Retry-After switched off is one (and
# every 429, the stream limit's included, then comes without the header).
DEFAULT_FAULTS: dict[str, Any] = {
    "fault_5xx": 0.003,
    "fault_html_502": 0.002,
    "fault_reset": 0.002,
    "fault_storm": 0.003,
    "storm_s": 0.001,
    "retry_after": "none",
}
DEFAULT_STORM: dict[str, Any] = {"fault_storm": 0.02, "storm_s": 2.0, "retry_after": "seconds"}


@dataclass(frozen=True)
class Plan:
    """Sizes and emulator settings of one benchmark run."""

    chat_jobs: int
    embed_jobs: int
    chat_latency_ms: float
    limit: int = 10
    faults: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_FAULTS))
    storm: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_STORM))
    kill_at: float = 0.5  # share of a clean pass's tokens billed when the child is killed
    seed: int = 1
    timeout_s: float = 1800.0

    def jobs(self, kind: str) -> int:
        return self.chat_jobs if kind == "chat" else self.embed_jobs

    def emulator(self, kind: str, knobs: dict[str, Any] | None = None) -> EmulatorConfig:
        """The `b2b` profile at the plan's stream limit (chat at its realistic latency)."""
        base: dict[str, Any] = {"stream_limit": self.limit, "seed": self.seed}
        if kind == "chat":
            base["latency_base_ms"] = self.chat_latency_ms
        return profile("b2b", **{**base, **(knobs or {})})


@dataclass(frozen=True)
class Outcome:
    """What one run left: answered ids, lost jobs, duplicates, and what the child cost."""

    answered: int
    lost: int
    duplicates: int
    wall_s: float
    cpu_s: float
    exit_code: int
    requests: dict[str, int]
    stderr_tail: str  # the end of what a child that exited non-zero printed


@dataclass(frozen=True)
class Throughput:
    jobs_per_s: float
    cpu_per_1000: float
    tokens: int
    run: Outcome


@dataclass(frozen=True)
class FaultRun:
    jobs_per_s: float
    run: Outcome


@dataclass(frozen=True)
class StormRun:
    inside: int
    windows: int
    run: Outcome


@dataclass(frozen=True)
class CrashRun:
    billed_ratio: float  # tokens of the killed run and the re-run over one clean pass
    repaid_jobs: int  # requests the server took on (and billed) beyond one per job
    paid_before_kill: int  # requests the killed run had the server take on
    kept_after_kill: int  # answers its output held after the kill
    killed: bool
    run: Outcome


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _env(emu: RunningEmulator) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIGACHAT_")}
    env.update(
        GIGACHAT_CREDENTIALS=emu.credentials,
        GIGACHAT_SCOPE=emu.scope,
        GIGACHAT_BASE_URL=emu.base_url,
        GIGACHAT_AUTH_URL=emu.auth_url,
    )
    return env


class PeerBench:
    """The job files of one benchmark run and the scenarios run on them."""

    def __init__(self, workdir: Path, plan: Plan) -> None:
        self.workdir = workdir
        self.plan = plan
        self.files = {
            "chat": write_chat_jobs(workdir / "chat.jsonl", plan.chat_jobs),
            "embed": write_embedding_jobs(workdir / "embed.jsonl", plan.embed_jobs),
        }
        # A small prefix of each file: its CPU is the start-up a full run also pays.
        self.baselines = {kind: self._prefix(kind) for kind in self.files}

    def _prefix(self, kind: str) -> tuple[Path, int]:
        count = max(10, self.plan.jobs(kind) // 20)
        path = self.workdir / f"{kind}-prefix.jsonl"
        with self.files[kind].open("rb") as src, path.open("wb") as dst:
            dst.writelines(islice(src, count))
        return path, count

    def _run(
        self, who: Contender, kind: str, jobs: Path, emu: RunningEmulator, out: Path,
        step: str, **kill: Any,
    ) -> ChildRun:
        """Run `who` on `jobs` into `out`; its stderr goes to `out`-`step`.log."""
        out.parent.mkdir(parents=True, exist_ok=True)
        # gigabatch's answer cache and remembered stream limit live in its cache directory:
        # one per run, shared only by a killed run and its re-run, so no pass is served by
        # another's answers (embeddings are cached by default) or starts knowing the limit.
        env = {**_env(emu), "GIGABATCH_CACHE_DIR": str(out.with_name(f"{out.name}-cache"))}
        return run_child(
            who.command(kind, jobs, out, self.plan.limit),
            env,
            out.with_name(f"{out.name}-{step}.log"),
            timeout_s=self.plan.timeout_s,
            **kill,
        )

    def _outcome(self, kind: str, out: Path, child: ChildRun, stats: dict[str, Any]) -> Outcome:
        ids = output_ids(out)
        answered = len(set(ids))
        return Outcome(
            answered=answered,
            lost=self.plan.jobs(kind) - answered,
            duplicates=duplicated_rows(ids),
            wall_s=child.wall_seconds,
            cpu_s=child.cpu_seconds,
            exit_code=child.exit_code,
            requests=requests_by_status(stats, kind),
            stderr_tail=child.stderr_tail[-500:] if child.exit_code else "",
        )

    def _out(self, scenario: str, who: Contender) -> Path:
        return self.workdir / scenario / _slug(who.name)

    def throughput(self, who: Contender, kind: str) -> Throughput:
        """A clean pass; CPU per 1,000 jobs has the start-up (a prefix run's CPU) taken off."""
        prefix, prefix_jobs = self.baselines[kind]
        out = self._out(f"{kind}-clean", who)
        with serve_emulator(self.plan.emulator(kind), subprocess=True) as emu:
            base = self._run(who, kind, prefix, emu, out.with_name(out.name + "-prefix"), "prefix")
            emu.reset_stats()
            child = self._run(who, kind, self.files[kind], emu, out, "run")
            stats = emu.stats()
        run = self._outcome(kind, out, child, stats)
        window = sending_window(stats, kind)
        extra_jobs = self.plan.jobs(kind) - prefix_jobs
        return Throughput(
            jobs_per_s=run.answered / window if window else 0.0,
            cpu_per_1000=(child.cpu_seconds - base.cpu_seconds) / extra_jobs * 1000,
            tokens=billed_tokens(stats),
            run=run,
        )

    def faults(self, who: Contender, kind: str) -> FaultRun:
        out = self._out(f"{kind}-faults", who)
        with serve_emulator(self.plan.emulator(kind, self.plan.faults), subprocess=True) as emu:
            child = self._run(who, kind, self.files[kind], emu, out, "run")
            stats = emu.stats()
        run = self._outcome(kind, out, child, stats)
        window = sending_window(stats, kind)
        return FaultRun(jobs_per_s=run.answered / window if window else 0.0, run=run)

    def storm(self, who: Contender) -> StormRun:
        out = self._out("chat-storm", who)
        with serve_emulator(self.plan.emulator("chat", self.plan.storm), subprocess=True) as emu:
            child = self._run(who, "chat", self.files["chat"], emu, out, "run")
            stats = emu.stats()
        return StormRun(
            inside=inside_windows(stats),
            windows=len(stats["retry_after_windows"]),
            run=self._outcome("chat", out, child, stats),
        )

    def crash(self, who: Contender, clean_tokens: int) -> CrashRun:
        """SIGKILL once `kill_at` of a clean pass's tokens are billed, then run it again."""
        out = self._out("chat-crash", who)
        with serve_emulator(self.plan.emulator("chat"), subprocess=True) as emu:

            def halfway() -> bool:
                billed = billed_tokens(emu.stats(arrivals=False))
                return billed >= clean_tokens * self.plan.kill_at

            chat = self.files["chat"]
            first = self._run(who, "chat", chat, emu, out, "killed", kill_when=halfway)
            # The requests in flight at the kill are counted once the server has answered
            # them into the void: wait out the longest latency.
            time.sleep(2 * self.plan.chat_latency_ms / 1000 + 0.5)
            paid = taken_on(requests_by_status(emu.stats(arrivals=False), "chat"))
            kept = len(set(output_ids(out)))
            child = self._run(who, "chat", chat, emu, out, "rerun")
            stats = emu.stats()
        run = self._outcome("chat", out, child, stats)
        return CrashRun(
            billed_ratio=billed_tokens(stats) / clean_tokens,
            repaid_jobs=taken_on(run.requests) - self.plan.chat_jobs,
            paid_before_kill=paid,
            kept_after_kill=kept,
            killed=first.killed,
            run=run,
        )
