"""What a run did: the live counters the engine keeps, and the summary it leaves behind
(`summary.json` in the output directory and a few human lines on stderr)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import orjson

from batch.api_types import Usage
from batch.checkpoint import Totals
from batch.errors import (
    BudgetExhausted,
    GigabatchError,
    RowsFailed,
    RunInterrupted,
    RunStopped,
    RunTimedOut,
)
from batch.layout import SUMMARY, write_atomic
from batch.pricing import PriceTable


@dataclass
class RunStats:
    """Counters shared by the workers, the progress line and the summary (one event loop,
    so plain attributes suffice)."""

    kind: str
    prices: PriceTable
    total_jobs: int = 0
    done_before: int = 0  # jobs already answered in the output directory when the run began
    skipped: int = 0  # jobs this run did not send: done before, or left out by a filter
    invalid: int = 0
    succeeded: int = 0
    failed: int = 0
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    unknown_usage: int = 0  # answers without a readable usage, counted at their ceiling
    cost: float = 0.0
    usage: dict[str, Usage] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    concurrency: int = 0
    max_concurrency: int = 0

    def add_usage(self, model: str, usage: Usage) -> None:
        self.usage[model] = self.usage.get(model, Usage()) + usage
        self.cost += self.prices.cost(model, usage)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def tokens(self) -> Usage:
        return sum(self.usage.values(), Usage())

    @property
    def remaining(self) -> int:
        return max(0, self.total_jobs - self.skipped - self.succeeded - self.failed)


@dataclass
class RunSummary:
    """How a run ended and what it did. `status` is one of: completed (every job answered
    successfully), failed_rows (finished, some rows failed), fatal, budget, interrupted,
    terminated, timeout; `message` is one line saying why. `data` is summary.json; the
    properties are its main figures, typed. `error` is the error that stopped a fatal or
    budget-stopped run, when the engine had one."""

    status: str
    message: str
    data: dict[str, Any]
    error: GigabatchError | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """Every job of the input succeeded."""
        return self.status == "completed"

    @property
    def out(self) -> Path:
        return Path(self.data["out"])

    @property
    def total_jobs(self) -> int:
        return int(self.data["jobs"]["total"])

    @property
    def succeeded(self) -> int:
        """Jobs in results/ (this run and earlier ones in the same output directory)."""
        return int(self.data["jobs"]["succeeded"])

    @property
    def failed(self) -> int:
        """Jobs in failed/."""
        return int(self.data["jobs"]["failed"])

    @property
    def remaining(self) -> int:
        """Jobs not answered yet: a rerun sends them."""
        return int(self.data["jobs"]["remaining"])

    @property
    def tokens(self) -> Usage:
        """What this run was billed, all models together."""
        t: dict[str, int] = next(iter(self.data["tokens"].values()), {})
        return Usage(t.get("prompt", 0), t.get("completion", 0), t.get("precached", 0))

    @property
    def cost(self) -> float:
        """What this run cost, in `currency`."""
        return float(self.data["cost"]["this_run"])

    @property
    def total_cost(self) -> float:
        """What every run into the output directory cost together."""
        return float(self.data["cost"]["total"])

    @property
    def currency(self) -> str:
        return str(self.data["cost"]["currency"])

    @property
    def wall_time_s(self) -> float:
        return float(self.data["wall_time_s"])

    @property
    def requests(self) -> int:
        return int(self.data["requests"])

    @property
    def rate_limited(self) -> int:
        """429s received."""
        return int(self.data["rate_limited"])

    def raise_for_status(self) -> None:
        """Raise what `gigabatch run` exits non-zero for: RowsFailed (3), the FatalError
        or RunStopped (1), BudgetExhausted (4), RunInterrupted (130, 143), RunTimedOut (1).
        Returns when every job succeeded (0)."""
        if self.ok:
            return
        if self.status in ("fatal", "budget") and self.error is not None:
            raise self.error
        raise self._stopped()

    def _stopped(self) -> GigabatchError:
        message = f"{self.status}: {self.message}"
        if self.status == "failed_rows":
            return RowsFailed(message, self)
        if self.status == "budget":
            return BudgetExhausted(message)
        if self.status in ("interrupted", "terminated"):
            return RunInterrupted(
                message, self, exit_code=130 if self.status == "interrupted" else 143
            )
        if self.status == "timeout":
            return RunTimedOut(message, self)
        return RunStopped(message, self)

    def write(self, out_dir: Path) -> None:
        write_atomic(out_dir / SUMMARY, orjson.dumps(self.data, option=orjson.OPT_INDENT_2))

    def print(self, stream: TextIO) -> None:
        d = self.data
        jobs = d["jobs"]
        lines = [
            f"{self.status}: {self.message}",
            f"  jobs: {jobs['succeeded']} succeeded, {jobs['failed']} failed, "
            f"{jobs['remaining']} remaining of {jobs['total']} "
            f"(this run: {jobs['this_run']['succeeded']} succeeded, "
            f"{jobs['this_run']['failed']} failed)",
        ]
        for kind, t in d["tokens"].items():
            lines.append(
                f"  tokens ({kind}, this run): {t['prompt']} prompt, {t['completion']} completion, "
                f"{t['precached']} precached"
            )
        if d.get("unknown_usage"):
            lines.append(
                f"  usage: {d['unknown_usage']} answers came without a readable usage; "
                "they are counted at their ceiling (the most they could cost)"
            )
        cost = d["cost"]
        lines.append(
            f"  cost: {cost['this_run']:.4f} {cost['currency']} this run, "
            f"{cost['total']:.4f} in total (prices of {cost['prices_taken']})"
        )
        lines.append(
            f"  time: {d['wall_time_s']:.1f} s, {d['throughput_jobs_per_s']:.1f} jobs/s, "
            f"{d['requests']} requests, {d['rate_limited']} 429s, {d['retries']} retries, "
            f"concurrency settled at {d['concurrency']['settled']:g} "
            f"(max {d['concurrency']['max']}"
            + ("" if d["concurrency"]["server_limit_found"] else "; the server refused none")
            + ")"
        )
        if "batches" in d:
            b = d["batches"]
            lines.append(
                f"  batches: {b['created']} created, {b['collected']} collected, "
                f"{b['waiting']} waiting on the server"
            )
        stream.write("\n".join(lines) + "\n")
        stream.flush()


def build_summary(
    *,
    status: str,
    message: str,
    stats: RunStats,
    totals: Totals,
    settled: float,
    limit_found: bool,
    out_dir: Path,
) -> RunSummary:
    """The summary of a run from its counters and the output directory's totals."""
    tokens = stats.tokens
    elapsed = stats.elapsed
    answered = stats.succeeded + stats.failed
    data: dict[str, Any] = {
        "status": status,
        "message": message,
        "kind": stats.kind,
        "out": str(out_dir),
        "jobs": {
            "total": stats.total_jobs,
            "succeeded": totals.succeeded,
            "failed": totals.failed,
            "remaining": max(0, stats.total_jobs - totals.succeeded - totals.failed),
            "invalid_skipped": stats.invalid,
            "this_run": {
                "succeeded": stats.succeeded,
                "failed": stats.failed,
                "skipped": stats.skipped,
                "done_before": stats.done_before,
            },
        },
        "tokens": {
            stats.kind: {
                "prompt": tokens.prompt_tokens,
                "completion": tokens.completion_tokens,
                "precached": tokens.precached_prompt_tokens,
                "total": tokens.total_tokens,
            }
        },
        "tokens_by_model": {
            model: {
                "prompt": u.prompt_tokens,
                "completion": u.completion_tokens,
                "precached": u.precached_prompt_tokens,
                "total": u.total_tokens,
            }
            for model, u in stats.usage.items()
        },
        "cost": {
            "this_run": round(stats.cost, 6),
            "total": round(totals.cost(stats.prices), 6),
            "currency": stats.prices.currency,
            "prices_taken": stats.prices.taken,
        },
        "wall_time_s": round(elapsed, 3),
        "throughput_jobs_per_s": round(answered / elapsed, 3) if elapsed > 0 else 0.0,
        "requests": stats.requests,
        "rate_limited": stats.rate_limited,
        "retries": stats.retries,
        "unknown_usage": stats.unknown_usage,
        "concurrency": {
            "settled": settled,
            "max": stats.max_concurrency,
            # False: no 429 came, so the server's limit is at or above what the run reached.
            "server_limit_found": limit_found,
        },
    }
    return RunSummary(status, message, data)
