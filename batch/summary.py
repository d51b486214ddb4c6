"""What a run did: the live counters the engine keeps, and the summary it leaves behind
(`summary.json` in the output directory and a few human lines on stderr)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import orjson

from batch.api_types import Usage
from batch.checkpoint import SUMMARY, Totals, write_atomic
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
    succeeded: int = 0  # answered this run: sent, or reused (the next two, not billed here)
    from_cache: int = 0  # answers found in the answer cache
    from_journal: int = 0  # answers an earlier leg received and journalled before a kill
    unchanged: int = 0  # --changed-since: answered as in the earlier output, so not written
    failed: int = 0
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
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
        return max(
            0, self.total_jobs - self.skipped - self.succeeded - self.failed - self.unchanged
        )

    @property
    def sent(self) -> int:
        """Jobs answered by a request of this run."""
        answered = self.succeeded + self.failed + self.unchanged
        return answered - self.from_cache - self.from_journal


@dataclass
class RunSummary:
    """How a run ended and what it did. `status` is one of: completed (every job answered
    successfully), failed_rows (finished, some rows failed), fatal, budget, interrupted,
    terminated; `message` is one line saying why."""

    status: str
    message: str
    data: dict[str, Any]

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
        reused = jobs["this_run"]
        if reused["from_cache"] or reused["from_journal"] or reused["unchanged"]:
            lines.append(_reuse_line(reused))
        for kind, t in d["tokens"].items():
            lines.append(
                f"  tokens ({kind}, this run): {t['prompt']} prompt, {t['completion']} completion, "
                f"{t['precached']} precached"
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
        stream.write("\n".join(lines) + "\n")
        stream.flush()


def _reuse_line(this_run: dict[str, Any]) -> str:
    """`  reuse: 9,900 from cache, 100 sent` (and what a journal or --changed-since did)."""
    parts = [f"{this_run['from_cache']:,} from cache"]
    if this_run["from_journal"]:
        parts.append(f"{this_run['from_journal']:,} from the journal")
    parts.append(f"{this_run['sent']:,} sent")
    if this_run["unchanged"]:
        parts.append(f"{this_run['unchanged']:,} unchanged since the earlier output (not written)")
    return "  reuse: " + ", ".join(parts)


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
            "remaining": max(
                0, stats.total_jobs - totals.succeeded - totals.failed - stats.unchanged
            ),
            "invalid_skipped": stats.invalid,
            "this_run": {
                "succeeded": stats.succeeded,
                "failed": stats.failed,
                "skipped": stats.skipped,
                "done_before": stats.done_before,
                "from_cache": stats.from_cache,
                "from_journal": stats.from_journal,
                "sent": stats.sent,
                "unchanged": stats.unchanged,
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
        "concurrency": {
            "settled": settled,
            "max": stats.max_concurrency,
            # False: no 429 came, so the server's limit is at or above what the run reached.
            "server_limit_found": limit_found,
        },
    }
    return RunSummary(status, message, data)
