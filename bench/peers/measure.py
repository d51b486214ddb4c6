"""Figures read after a run, the same way for every contender: which job ids its output
holds (Parquet parts under `results/`, or `results.jsonl`), and what the emulator saw
(arrivals, announced Retry-After windows, tokens billed)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

ENDPOINTS = {"chat": "/chat/completions", "embed": "/embeddings"}
# A request already on its way when a window opened may land in its first moments (the
# client cannot know of the window before the first 429 reaches it); as in the e2e test.
IN_FLIGHT_SLACK_S = 0.05


def output_ids(out: Path) -> list[str]:
    """Every job id in the output, once per row (duplicates kept). A JSONL line cut short by
    a crash is not a row; neither is a Parquet file that is not whole (`*.tmp`)."""
    ids: list[str] = []
    for part in sorted((out / "results").glob("*.parquet")):
        ids.extend(str(x) for x in pq.read_table(part, columns=["id"]).column("id").to_pylist())
    jsonl = out / "results.jsonl"
    if jsonl.exists():
        with jsonl.open(encoding="utf-8") as lines:
            for line in lines:
                try:
                    ids.append(str(json.loads(line)["id"]))
                except (ValueError, KeyError):
                    continue
    return ids


def duplicated_rows(ids: Iterable[str]) -> int:
    """Rows beyond the first for each id."""
    seen: set[str] = set()
    extra = 0
    for job_id in ids:
        if job_id in seen:
            extra += 1
        seen.add(job_id)
    return extra


def arrivals(stats: dict[str, Any], kind: str) -> list[float]:
    """Arrival times of the requests to `kind`'s endpoint."""
    suffix = ENDPOINTS[kind]
    return [a["t"] for a in stats["arrivals"] if a["path"].endswith(suffix)]


def sending_window(stats: dict[str, Any], kind: str) -> float:
    """Seconds from the first request's arrival to the last one's answer (its arrival plus
    the mean latency): the run's working time, start-up and imports left out."""
    times = arrivals(stats, kind)
    if not times:
        return 0.0
    return float(max(times) - min(times) + (stats["mean_latency_s"] or 0.0))


def inside_windows(stats: dict[str, Any], slack_s: float = IN_FLIGHT_SLACK_S) -> int:
    """API requests that arrived inside an announced Retry-After window (after its slack)."""
    windows = [(w["start"] + slack_s, w["end"]) for w in stats["retry_after_windows"]]
    return sum(
        1
        for a in stats["arrivals"]
        if a["path"].startswith("/api/v1/") and any(s < a["t"] < e for s, e in windows)
    )


def billed_tokens(stats: dict[str, Any]) -> int:
    """Tokens the emulator billed: prompt and completion for chat, input for embeddings."""
    tokens = stats["tokens"]
    return int(tokens["prompt"] + tokens["completion"] + tokens["embedding"])


def requests_by_status(stats: dict[str, Any], kind: str) -> dict[str, int]:
    """Requests to `kind`'s endpoint by status ("0": cut before a full answer)."""
    suffix = ENDPOINTS[kind]
    total: dict[str, int] = {}
    for path, by_status in stats["requests"].items():
        if path.endswith(suffix):
            for status, n in by_status.items():
                total[status] = total.get(status, 0) + n
    return total


def taken_on(requests: dict[str, int]) -> int:
    """Requests the server took on and billed: all but the ones it refused (4xx)."""
    return sum(n for status, n in requests.items() if not status.startswith("4"))
