"""Outage: when failures of many requests mean the API is away, and who may probe it."""

from __future__ import annotations

import anyio
import pytest

from batch.errors import BadRequest, ConnectionFailed, RateLimited, RequestTimedOut, ServerError
from batch.outage import Outage


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def refused() -> ConnectionFailed:
    return ConnectionFailed("connect refused")


def test_failures_of_several_requests_in_a_row_begin_an_outage_and_announce_it() -> None:
    said: list[str] = []
    outage = Outage(clock=Clock(), announce=said.append)
    for owner in ("a", "b"):
        outage.failed(refused(), owner, level=4, probe=False)
    assert not outage.active
    outage.failed(RequestTimedOut("no answer"), "c", level=4, probe=False)
    assert outage.active
    assert len(said) == 1 and said[0].startswith("API unreachable since ")


def test_one_request_failing_again_and_again_is_about_that_request() -> None:
    outage = Outage(clock=Clock())
    for _ in range(10):
        outage.failed(ServerError("boom", status=500), "same", level=1, probe=False)
    assert not outage.active


def test_an_answer_between_failures_means_no_outage() -> None:
    outage = Outage(clock=Clock())
    for owner in ("a", "b", "c", "d"):
        outage.failed(refused(), owner, level=4, probe=False)
        if owner == "b":
            outage.record(None, owner, 4, probe=False)  # an answer came
    assert not outage.active


def test_at_high_concurrency_it_takes_half_the_level_in_a_row() -> None:
    outage = Outage(clock=Clock())
    for i in range(7):
        outage.failed(refused(), i, level=16, probe=False)
    assert not outage.active
    outage.failed(refused(), 7, level=16, probe=False)
    assert outage.active


def test_errors_that_are_answers_end_an_outage_and_others_do_not_count() -> None:
    said: list[str] = []
    outage = Outage(clock=Clock(), announce=said.append)
    for owner in "abc":
        outage.failed(refused(), owner, level=2, probe=False)
    assert outage.excuses(refused()) and not outage.excuses(BadRequest("bad", status=400))
    outage.record(RateLimited(), "x", 2, probe=False)  # a 429 is the server answering
    assert not outage.active and said[-1].startswith("API back at ")
    assert not outage.excuses(refused())


def test_during_an_outage_one_probe_at_a_time_goes_and_the_rest_wait() -> None:
    clock = Clock()
    outage = Outage(clock=clock, probe_base=0.0)
    for owner in "abc":
        outage.failed(refused(), owner, level=2, probe=False)
    admitted: list[bool] = []

    async def request() -> None:
        admitted.append(await outage.admit())

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(request)
            await anyio.sleep(0.05)
            assert admitted == [True]  # the probe; four wait
            outage.record(None, "probe", 2, probe=True)  # the probe was answered
        assert admitted == [True, False, False, False, False]

    anyio.run(main)


def test_failed_probes_are_spaced_by_a_growing_backoff() -> None:
    clock = Clock()
    outage = Outage(clock=clock, probe_base=1.0, probe_cap=5.0)
    for owner in "abc":
        outage.failed(refused(), owner, level=2, probe=False)
    spacing = []
    for _ in range(5):
        outage.record(refused(), "probe", 2, probe=True)
        spacing.append(outage._next_probe - clock.now)
    assert spacing[0] <= 1.0 and spacing[-1] >= 2.5 and max(spacing) <= 5.0


def test_an_outage_past_max_outage_has_expired_and_says_so() -> None:
    clock = Clock()
    outage = Outage(clock=clock, max_outage=60.0)
    for owner in "abc":
        outage.failed(refused(), owner, level=2, probe=False)
    clock.now += 59
    assert not outage.expired
    clock.now += 2
    assert outage.expired
    assert "--max-outage 60 s" in str(outage.give_up())


@pytest.mark.parametrize("error", [BadRequest("bad", status=400), RateLimited()])
def test_answers_never_begin_an_outage(error: Exception) -> None:
    outage = Outage(clock=Clock())
    for owner in range(10):
        outage.record(error, owner, 2, probe=False)
    assert not outage.active
