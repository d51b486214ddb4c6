"""What a run did: the live counters the engine keeps, and the summary it leaves behind
(`summary.json` in the output directory and a few human lines on stderr)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import orjson

from batch.api_types import Usage
from batch.changes import REMOVED
from batch.checkpoint import Totals
from batch.errors import (
    BudgetExhausted,
    GigabatchError,
    RowsFailed,
    RunInterrupted,
    RunStopped,
    RunTimedOut,
)
from batch.eventlog import EVENTS
from batch.failures import FailureClass
from batch.layout import FAILED, INVALID, SUMMARY, write_atomic
from batch.part_store import PartStore
from batch.pricing import PriceTable

# What an output URI gets a copy of from its state directory when a run ends, besides the
# summary (copied last); cluster.json holds a Ray run's coordinator figures (batch/cluster/).
RUN_FILES = (INVALID, EVENTS, f"{REMOVED}/part-00001.parquet", "cluster.json")

@dataclass
class RunStats:
    """Counters shared by the workers, the progress line and the summary (one event loop,
    so plain attributes suffice)."""

    kind: str
    prices: PriceTable
    total_jobs: int = 0
    done_before: int = 0  # jobs already answered in the output directory when the run began
    failed_before: int = 0  # of them, those in failed/
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

    def write(self, out_dir: Path, store: PartStore | None = None) -> None:
        """Write OUT/summary.json; with an output URI's `store` (`out_dir` is then its state
        directory), copy it and the run's other files there too, the summary last."""
        write_atomic(out_dir / SUMMARY, orjson.dumps(self.data, option=orjson.OPT_INDENT_2))
        if store is not None:
            for name in (*RUN_FILES, SUMMARY):
                store.publish(out_dir, name)

    def print(self, stream: TextIO, retry_command: str | None = None) -> None:
        """The summary in a few lines; `retry_command` is the command line that re-drives
        the failed rows (the CLI knows it), shown when there are any."""
        d = self.data
        jobs = d["jobs"]
        lines = [
            f"{self.status}: {self.message}",
            f"  jobs: {jobs['succeeded']} succeeded, {jobs['failed']} failed, "
            f"{jobs['remaining']} remaining of {jobs['total']} "
            f"(this run: {jobs['this_run']['succeeded']} succeeded, "
            f"{jobs['this_run']['failed']} failed)",
        ]
        if jobs["invalid_skipped"]:
            lines.append(
                f"  invalid: {jobs['invalid_skipped']} lines skipped (--skip-invalid), "
                f"listed in {Path(d['out']) / INVALID}"
            )
        reused = jobs["this_run"]
        if reused["from_cache"] or reused["from_journal"] or reused["unchanged"]:
            lines.append(_reuse_line(reused))
        lines.extend(_failure_lines(d, retry_command))
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
        lines.append(_time_line(d))
        if "batches" in d:
            b = d["batches"]
            lines.append(
                f"  batches: {b['created']} created, {b['collected']} collected, "
                f"{b['waiting']} waiting on the server"
            )
        stream.write("\n".join(lines) + "\n")
        stream.flush()


def _time_line(d: dict[str, Any]) -> str:
    line = (
        f"  time: {d['wall_time_s']:.1f} s, {d['throughput_jobs_per_s']:.1f} jobs/s, "
        f"{d['requests']} requests, {d['rate_limited']} 429s, {d['retries']} retries"
    )
    concurrency = d["concurrency"]
    if not concurrency["max"]:  # batches mode: no request of the run waits for answers
        return line
    refused = "" if concurrency["server_limit_found"] else "; the server refused none"
    return (
        f"{line}, concurrency settled at {concurrency['settled']:g} "
        f"(max {concurrency['max']}{refused})"
    )


def run_outcome(
    stop_status: str, stop_message: str, stats: RunStats, totals: Totals
) -> tuple[str, str]:
    """The status and one-line message a run ends with: the stop's reason when it stopped,
    else what the output directory holds now (and that a rerun found nothing to send);
    lines left out by --skip-invalid are always said."""
    status = "failed_rows" if stop_status == "completed" and totals.failed else stop_status
    message = stop_message
    if not message:
        done = totals.succeeded + totals.failed
        nothing_sent = stats.succeeded + stats.failed == 0 and done >= stats.total_jobs > 0
        before = f"nothing left to send: all {done} jobs were answered before"
        if totals.failed:
            failed = f"{totals.failed} failed; re-drive them with --retry-failed"
            message = (
                f"{before}, {failed}" if nothing_sent else f"{totals.succeeded} succeeded, {failed}"
            )
        else:
            message = before if nothing_sent else f"all {totals.succeeded} jobs succeeded"
    if stats.invalid:
        message += f"; {stats.invalid} invalid lines skipped"
    return status, message


def _failure_lines(data: dict[str, Any], retry_command: str | None) -> list[str]:
    failures = data.get("failures") or {}
    if not failures:
        return []
    lines = [f"  failed rows by error class (in {Path(data['out']) / FAILED}/):"]
    for name, entry in failures.items():
        example = entry["example"]
        lines.append(
            f"    {name}: {entry['count']}, e.g. id {example['id']!r}: {example['message']}"
        )
    if retry_command:
        lines.append(f"  re-drive them: {retry_command}")
    return lines


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
    out_dir: Path | str,
    failures: Sequence[FailureClass] = (),
) -> RunSummary:
    """The summary of a run from its counters, the output directory's totals and its
    failed rows by class."""
    elapsed = stats.elapsed
    answered = stats.succeeded + stats.failed
    data: dict[str, Any] = {
        "status": status,
        "message": message,
        "kind": stats.kind,
        "out": str(out_dir),
        "jobs": _jobs_json(stats, totals),
        "failures": {f.error_class: f.to_json() for f in failures},
        "tokens": {stats.kind: _usage_json(stats.tokens)},
        "tokens_by_model": {model: _usage_json(u) for model, u in stats.usage.items()},
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


def _jobs_json(stats: RunStats, totals: Totals) -> dict[str, Any]:
    """The summary's `jobs`: the output directory's counts, and what this run did."""
    return {
        "total": stats.total_jobs,
        "succeeded": totals.succeeded,
        "failed": totals.failed,
        "remaining": max(0, stats.total_jobs - totals.succeeded - totals.failed - stats.unchanged),
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
    }


def _usage_json(usage: Usage) -> dict[str, int]:
    """Token counts as the summary writes them (per kind and per model)."""
    return {
        "prompt": usage.prompt_tokens,
        "completion": usage.completion_tokens,
        "precached": usage.precached_prompt_tokens,
        "total": usage.total_tokens,
    }
