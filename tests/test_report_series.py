"""The data behind each plot of the run report, from synthetic event logs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from batch.eventlog import ATTEMPT, END, LEG, LIMIT, PAUSE, Event, EventLog, read_events
from batch.report import series

T0 = 1_700_000_000.0


def ev(kind: int, t: float, **fields: object) -> Event:
    base: dict[str, object] = {
        "kind": kind,
        "error": "",
        "status": 0,
        "limit": 0,
        "in_flight": 0,
        "weight": 1,
        "jobs": 0,
        "t": T0 + t,
        "duration": 0.0,
        "cost": 0.0,
        "prompt": 0,
        "completion": 0,
        "precached": 0,
    }
    base.update(fields)
    return Event(**base)  # type: ignore[arg-type]


def leg(t: float, *, max_cost: float = math.nan, limit: int = 16) -> Event:
    return ev(LEG, t, limit=limit, cost=max_cost)


def answered(t: float, duration: float, **fields: object) -> Event:
    return ev(ATTEMPT, t, **{"duration": duration, "status": 200, "jobs": 1, **fields})


def refused(t: float, duration: float = 0.01) -> Event:
    return ev(ATTEMPT, t, duration=duration, status=429, error="RateLimited", jobs=1)


def test_legs_end_at_their_end_record_or_their_last_event_when_killed() -> None:
    events = [leg(0), answered(1, 0.5), answered(3, 1.0), leg(10, max_cost=5.0)]
    events += [answered(11, 1.0), ev(END, 13)]
    found = series.legs(events)
    assert [(x.number, x.killed) for x in found] == [(1, True), (2, False)]
    assert found[0].end == pytest.approx(T0 + 4.0)
    assert found[1].end == pytest.approx(T0 + 13.0)
    assert found[0].max_cost is None and found[1].max_cost == 5.0


def test_grid_picks_the_smallest_step_within_the_bucket_limit_and_masks_gaps() -> None:
    events = [leg(0), answered(0, 1), ev(END, 20), leg(100), ev(END, 120)]
    g = series.grid(series.legs(events), max_buckets=300)
    assert g.step == 0.5
    assert len(g.times) == 240
    assert g.live[0] and g.live[-1]
    assert not g.live[g.index(T0 + 60)]


def test_throughput_counts_answered_jobs_times_weight_by_the_bucket_they_ended_in() -> None:
    events = [leg(0), answered(0.1, 0.2, jobs=4), answered(0.2, 1.0, weight=2), refused(0.3)]
    events.append(ev(END, 2))
    g = series.grid(series.legs(events), max_buckets=2)
    out = series.throughput(events, g)
    assert g.step == 1
    assert out["jobs_per_s"] == [4.0, 2.0]
    assert out["requests_per_s"] == [2.0, 2.0]


def test_throughput_is_none_between_legs() -> None:
    events = [leg(0), answered(0, 0.5), ev(END, 1), leg(8), answered(8, 0.5), ev(END, 10)]
    g = series.grid(series.legs(events), max_buckets=10)
    values = series.throughput(events, g)["jobs_per_s"]
    assert values[0] == 1.0 and values[4] is None and values[-1] == 0.0


def test_in_flight_is_the_time_weighted_mean_and_the_level_follows_limit_records() -> None:
    events = [leg(0), ev(LIMIT, 0, limit=2), answered(0, 2.0), answered(0.5, 0.5)]
    events += [ev(LIMIT, 1.5, limit=8), refused(1.2), refused(1.3), ev(END, 2)]
    g = series.grid(series.legs(events), max_buckets=2)
    out = series.concurrency(events, g)
    assert out["in_flight"] == pytest.approx([1.5, 1.0 + 0.01 * 2])
    assert out["limit"] == [2.0, 8.0]
    assert out["rate_limited"] == [0.0, 2.0]


def test_pause_windows_that_overlap_are_merged() -> None:
    events = [ev(PAUSE, 1, duration=1.0), ev(PAUSE, 1.5, duration=1.0), ev(PAUSE, 5, duration=0.5)]
    assert series.pauses(events) == [(T0 + 1, T0 + 2.5), (T0 + 5, T0 + 5.5)]


def test_percentile_interpolates_between_ranks() -> None:
    assert series.percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert series.percentile([5.0], 0.99) == 5.0
    with pytest.raises(ValueError):
        series.percentile([], 0.5)


def test_latency_percentiles_per_bucket_leave_out_failures_and_empty_buckets() -> None:
    events = [leg(0)] + [answered(0.0, d / 1000) for d in range(1, 101)]
    events += [refused(0.1, 5.0), ev(END, 3)]
    g = series.grid(series.legs(events), max_buckets=3)
    out = series.latency(events, g)
    assert out["p50_ms"][0] == pytest.approx(50.5)
    assert out["p99_ms"][0] == pytest.approx(99.01)
    assert out["p50_ms"][1:] == [None, None]


def test_spend_is_cumulative_and_the_budget_is_that_of_the_leg_in_force() -> None:
    events = [leg(0), answered(0, 0.1, prompt=10, completion=5, precached=3, cost=0.25)]
    events += [answered(0.5, 0.1, prompt=10, weight=3, cost=0.1), ev(END, 1)]
    events += [leg(1.5, max_cost=2.0), answered(1.6, 0.1, cost=1.0), ev(END, 2)]
    g = series.grid(series.legs(events), max_buckets=4)
    out = series.spend(events, g, series.legs(events))
    assert out["prompt_tokens"][-1] == 40
    assert out["completion_tokens"][-1] == 5
    assert out["precached_tokens"][-1] == 3
    assert out["cost"] == pytest.approx([0.25, 0.55, 0.55, 1.55])
    assert out["budget"] == [None, None, 2.0, 2.0]


def test_failures_by_class_count_weighted_attempts_most_frequent_first() -> None:
    events = [refused(0), refused(1), ev(ATTEMPT, 2, error="ServerError", status=502)]
    events += [ev(ATTEMPT, 3, error="Cancelled"), answered(4, 0.1)]
    assert series.failures_by_class(events) == {"RateLimited": 2, "ServerError": 1}


def test_series_read_a_log_written_by_event_log(tmp_path: Path) -> None:
    log = EventLog.open(tmp_path, max_concurrency=4, max_cost=9.0)
    log.attempt(0.0, 0.0, status=200, error="", jobs=3, limit=2, in_flight=1)
    log.close()
    events = read_events(tmp_path)
    run_legs = series.legs(events)
    assert [(x.killed, x.max_cost, x.max_concurrency) for x in run_legs] == [(False, 9.0, 4)]
    g = series.grid(run_legs)
    assert sum(v or 0 for v in series.throughput(events, g)["jobs_per_s"]) * g.step == 3
