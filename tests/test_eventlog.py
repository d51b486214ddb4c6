"""The event log: what one leg writes, what a reader gets back, torn tails, the size cap."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pytest

from batch.api_types import Usage
from batch.errors import ReportError
from batch.eventlog import (
    ATTEMPT,
    END,
    EVENTS,
    LEG,
    LIMIT,
    MAGIC,
    PAUSE,
    RECORD,
    EventLog,
    read_events,
)


def _attempt(log: EventLog, i: int, *, error: str = "", status: int = 200) -> None:
    now = time.monotonic()
    log.attempt(
        now - 0.1,
        now,
        status=status,
        error=error,
        jobs=1,
        limit=4,
        in_flight=2,
        usage=Usage(10, 20, 5),
        cost=0.5,
    )


def test_a_leg_reads_back_with_its_attempts_pauses_and_limits(tmp_path: Path) -> None:
    log = EventLog.open(tmp_path, max_concurrency=16, max_cost=50.0, done_before=3, total_jobs=9)
    now = time.monotonic()
    log.attempt(now - 0.25, now, status=429, error="RateLimited", jobs=2, limit=8, in_flight=5)
    log.pause(now, now + 1.0)
    log.limit_changed(now + 0.5, 6)
    _attempt(log, 1)
    log.close()
    events = read_events(tmp_path)
    assert [e.kind for e in events] == [LEG, LIMIT, ATTEMPT, PAUSE, LIMIT, LIMIT, ATTEMPT, END]
    leg = events[0]
    assert (leg.limit, leg.cost, leg.completion, leg.precached) == (16, 50.0, 3, 9)
    refused = events[2]
    assert (refused.status, refused.error, refused.jobs, refused.in_flight) == (
        429,
        "RateLimited",
        2,
        5,
    )
    assert refused.duration == pytest.approx(0.25, abs=1e-6)
    assert abs(refused.end - time.time()) < 5
    assert events[3].duration == pytest.approx(1.0, abs=1e-6)
    answered = events[-2]
    assert (answered.prompt, answered.completion, answered.precached) == (10, 20, 5)
    assert answered.cost == pytest.approx(0.5)
    assert answered.error == "" and answered.weight == 1


def test_a_leg_without_a_budget_stores_nan_cost(tmp_path: Path) -> None:
    EventLog.open(tmp_path, max_concurrency=4).close()
    assert math.isnan(read_events(tmp_path)[0].cost)


def test_each_open_appends_a_leg_and_restart_starts_over(tmp_path: Path) -> None:
    for _ in range(3):
        EventLog.open(tmp_path, max_concurrency=4).close()
    assert [e.kind for e in read_events(tmp_path)].count(LEG) == 3
    EventLog.open(tmp_path, max_concurrency=4, restart=True).close()
    assert [e.kind for e in read_events(tmp_path)] == [LEG, END]


def test_a_torn_last_record_is_ignored_and_cut_by_the_next_leg(tmp_path: Path) -> None:
    log = EventLog.open(tmp_path, max_concurrency=4)
    _attempt(log, 1)
    log.flush()  # a kill -9 now: no END record, and half a record at the end
    with (tmp_path / EVENTS).open("ab") as f:
        f.write(b"\x02" * (RECORD.size // 2))
    assert [e.kind for e in read_events(tmp_path)] == [LEG, LIMIT, ATTEMPT]
    EventLog.open(tmp_path, max_concurrency=4).close()
    size = (tmp_path / EVENTS).stat().st_size
    assert (size - len(MAGIC)) % RECORD.size == 0
    assert [e.kind for e in read_events(tmp_path)] == [LEG, LIMIT, ATTEMPT, LEG, END]


def test_records_reach_the_file_within_a_second_without_close(tmp_path: Path) -> None:
    log = EventLog.open(tmp_path, max_concurrency=4)
    _attempt(log, 1)
    time.sleep(1.05)
    _attempt(log, 2)  # the next record flushes what waited for a second
    assert [e.kind for e in read_events(tmp_path)].count(ATTEMPT) == 2
    log.close()


def test_past_the_cap_answers_are_sampled_with_weights_and_failures_kept(
    tmp_path: Path,
) -> None:
    cap = 100 * RECORD.size
    log = EventLog.open(tmp_path, max_concurrency=4, cap_bytes=cap)
    for i in range(400):
        _attempt(log, i)
    _attempt(log, 0, error="ServerError", status=500)
    log.close()
    size = (tmp_path / EVENTS).stat().st_size
    assert size <= 2 * cap + 2 * RECORD.size
    attempts = [e for e in read_events(tmp_path) if e.kind == ATTEMPT]
    answered = [e for e in attempts if not e.error]
    assert len(answered) < 400
    assert any(e.weight > 1 for e in answered)
    assert sum(e.weight for e in answered) == pytest.approx(400, rel=0.1)
    assert attempts[-1].error == "ServerError"


def test_past_twice_the_cap_only_legs_are_written(tmp_path: Path) -> None:
    cap = 10 * RECORD.size
    log = EventLog.open(tmp_path, max_concurrency=4, cap_bytes=cap)
    for i in range(200):
        _attempt(log, i, error="ServerError", status=500)
    log.close()
    assert (tmp_path / EVENTS).stat().st_size <= 2 * cap + 2 * RECORD.size


def test_an_absent_log_reads_as_no_events(tmp_path: Path) -> None:
    assert read_events(tmp_path) == []


def test_a_file_that_is_not_an_event_log_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / EVENTS).write_bytes(b"hello world")
    with pytest.raises(ReportError, match="not a gigabatch event log"):
        read_events(tmp_path)


def test_a_foreign_file_is_replaced_when_a_leg_opens(tmp_path: Path) -> None:
    (tmp_path / EVENTS).write_bytes(b"x" * 100)
    EventLog.open(tmp_path, max_concurrency=4).close()
    assert [e.kind for e in read_events(tmp_path)] == [LEG, END]
    assert (tmp_path / EVENTS).stat().st_size == len(MAGIC) + 2 * RECORD.size


def test_counts_out_of_their_fields_range_are_stored_at_the_bound(tmp_path: Path) -> None:
    log = EventLog.open(tmp_path, max_concurrency=70_000)
    now = time.monotonic()
    log.attempt(
        now, now, status=200, error="", jobs=1, limit=4, in_flight=-1, usage=Usage(2**33, 1, 0)
    )
    log.close()
    events = read_events(tmp_path)
    assert events[0].limit == 0xFFFF
    attempt = next(e for e in events if e.kind == ATTEMPT)
    assert (attempt.in_flight, attempt.prompt, attempt.completion) == (0, 0xFFFFFFFF, 1)


def test_a_write_error_ends_the_log_but_never_the_run(tmp_path: Path) -> None:
    log = EventLog.open(tmp_path, max_concurrency=4)
    os.close(log._fd)  # the file can no longer be written (as on a full disk)
    _attempt(log, 1)
    log.flush()
    assert log.failure is not None and "event log stopped" in log.failure
    _attempt(log, 2)
    log.close()
    assert [e.kind for e in read_events(tmp_path)] == [LEG]
