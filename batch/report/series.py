"""The data behind each plot of the run report: pure functions from the event log's records
to time series on one grid of buckets. Buckets outside every leg hold None, so a plot shows
the gap between a killed leg and its resume instead of a line of zeros."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from batch.eventlog import ATTEMPT, END, LEG, LIMIT, PAUSE, Event

# Bucket widths (seconds) a report may use: the smallest that gives at most MAX_BUCKETS.
_STEPS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200)
MAX_BUCKETS = 300

Values = list[float | None]


@dataclass(frozen=True)
class Leg:
    """One process run on the directory. `killed`: it has no END record."""

    number: int
    start: float
    end: float
    killed: bool
    max_concurrency: int
    max_cost: float | None
    max_tokens: int | None


@dataclass(frozen=True)
class Grid:
    """Bucket start times (unix seconds) of width `step`, and which lie inside a leg."""

    start: float
    step: float
    times: list[float]
    live: list[bool]

    def index(self, t: float) -> int:
        return min(len(self.times) - 1, max(0, int((t - self.start) / self.step)))

    def masked(self, values: list[float]) -> Values:
        return [v if live else None for v, live in zip(values, self.live, strict=True)]


def legs(events: list[Event]) -> list[Leg]:
    """The legs in file order; a leg ends at its END record or at its last event."""
    found: list[Leg] = []
    current: Event | None = None
    last = 0.0
    for event in [*events, None]:
        if event is not None and event.kind not in (LEG, END):
            last = max(last, event.end)
            continue
        if current is not None:
            closed = event is not None and event.kind == END
            end = event.t if closed and event is not None else last
            found.append(_leg(len(found) + 1, current, max(end, current.t), killed=not closed))
            current = None
        if event is not None and event.kind == LEG:
            current = event
            last = event.t
    return found


def _leg(number: int, record: Event, end: float, *, killed: bool) -> Leg:
    return Leg(
        number=number,
        start=record.t,
        end=end,
        killed=killed,
        max_concurrency=record.limit,
        max_cost=None if math.isnan(record.cost) else record.cost,
        max_tokens=record.prompt or None,
    )


def grid(run_legs: list[Leg], *, max_buckets: int = MAX_BUCKETS) -> Grid:
    """Buckets covering every leg, with the smallest step giving at most `max_buckets`."""
    if not run_legs:
        return Grid(0.0, 1.0, [], [])
    start = min(leg.start for leg in run_legs)
    end = max(leg.end for leg in run_legs)
    span = max(end - start, 1e-9)
    step = next((s for s in _STEPS if span / s <= max_buckets), _STEPS[-1])
    count = max(1, math.ceil(span / step))
    times = [start + i * step for i in range(count)]
    live = [any(leg.start < t + step and t <= leg.end for leg in run_legs) for t in times]
    return Grid(start, step, times, live)


def _attempts(events: list[Event]) -> list[Event]:
    return [e for e in events if e.kind == ATTEMPT]


def throughput(events: list[Event], g: Grid) -> dict[str, Values]:
    """Jobs answered and requests sent per second, by the bucket an attempt ended in."""
    jobs = [0.0] * len(g.times)
    requests = [0.0] * len(g.times)
    for e in _attempts(events):
        i = g.index(e.end)
        requests[i] += e.weight
        if not e.error:
            jobs[i] += e.jobs * e.weight
    return {
        "jobs_per_s": g.masked([v / g.step for v in jobs]),
        "requests_per_s": g.masked([v / g.step for v in requests]),
    }


def concurrency(events: list[Event], g: Grid) -> dict[str, Values]:
    """Mean requests in flight per bucket (time-weighted), the limiter's level at each
    bucket's end, and the 429s received per bucket."""
    busy = [0.0] * len(g.times)
    refused = [0.0] * len(g.times)
    for e in _attempts(events):
        _spread(busy, g, e.t, e.end, e.weight)
        if e.error == "RateLimited":
            refused[g.index(e.end)] += e.weight
    changes = sorted((e.t, e.limit) for e in events if e.kind == LIMIT)
    level: list[float] = []
    k, current = 0, 0.0
    for t in g.times:
        while k < len(changes) and changes[k][0] <= t + g.step:
            current = float(changes[k][1])
            k += 1
        level.append(current)
    return {
        "in_flight": g.masked([b / g.step for b in busy]),
        "limit": g.masked(level),
        "rate_limited": g.masked(refused),
    }


def _spread(into: list[float], g: Grid, start: float, end: float, weight: int) -> None:
    """Add the seconds of [start, end) that fall in each bucket, times `weight`."""
    i = g.index(start)
    while i < len(g.times) and g.times[i] < end:
        lo = max(start, g.times[i])
        hi = min(end, g.times[i] + g.step)
        if hi > lo:
            into[i] += (hi - lo) * weight
        i += 1


def pauses(events: list[Event]) -> list[tuple[float, float]]:
    """Run-wide pause windows (Retry-After or backoff), overlapping ones merged."""
    windows = sorted((e.t, e.end) for e in events if e.kind == PAUSE and e.duration > 0)
    merged: list[tuple[float, float]] = []
    for start, end in windows:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-quantile (0..1) of sorted values, by linear interpolation."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def latency(events: list[Event], g: Grid) -> dict[str, Values]:
    """p50 / p90 / p99 latency (ms) of the answered attempts ending in each bucket."""
    per_bucket: list[list[float]] = [[] for _ in g.times]
    for e in _attempts(events):
        if not e.error:
            per_bucket[g.index(e.end)].append(e.duration * 1000.0)
    out: dict[str, Values] = {"p50_ms": [], "p90_ms": [], "p99_ms": []}
    for values in per_bucket:
        values.sort()
        for key, q in (("p50_ms", 0.5), ("p90_ms", 0.9), ("p99_ms", 0.99)):
            out[key].append(percentile(values, q) if values else None)
    return out


def spend(events: list[Event], g: Grid, run_legs: list[Leg]) -> dict[str, Values]:
    """Cumulative billed tokens (prompt, completion; precached apart) and cost by the end of
    each bucket, with the budget of the leg in force then (None without one)."""
    sums = {"prompt": [0.0] * len(g.times), "completion": [0.0] * len(g.times)}
    sums["precached"] = [0.0] * len(g.times)
    cost = [0.0] * len(g.times)
    for e in _attempts(events):
        i = g.index(e.end)
        sums["prompt"][i] += e.prompt * e.weight
        sums["completion"][i] += e.completion * e.weight
        sums["precached"][i] += e.precached * e.weight
        cost[i] += e.cost * e.weight
    out: dict[str, Values] = {f"{k}_tokens": _cumulative(v) for k, v in sums.items()}
    out["cost"] = _cumulative(cost)
    budget: Values = []
    for t in g.times:
        in_force = [leg for leg in run_legs if leg.start <= t + g.step]
        budget.append(in_force[-1].max_cost if in_force else None)
    out["budget"] = budget
    return out


def _cumulative(values: list[float]) -> Values:
    total = 0.0
    out: Values = []
    for v in values:
        total += v
        out.append(total)
    return out


def failures_by_class(events: list[Event]) -> dict[str, int]:
    """Failed attempts by error class, most frequent first (cancelled ones left out)."""
    counts: Counter[str] = Counter()
    for e in _attempts(events):
        if e.error and e.error != "Cancelled":
            counts[e.error] += e.weight
    return dict(counts.most_common())
