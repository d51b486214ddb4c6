"""AdaptiveLimiter and Cooldown: AIMD between 1 and the ceiling, and the run-wide pause.

Requests are held in real slots (`async with limiter.slot()`), on an event loop in a
portal thread, and each is ended by the test: a success, a 429 or another error leaving
the block; the limiter learns from how the block was left."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import anyio
import pytest
from anyio.abc import TaskStatus
from anyio.from_thread import BlockingPortal, start_blocking_portal

from batch.errors import BadRequest, RateLimited, ServerError
from batch.limiter import AdaptiveLimiter, Cooldown


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def portal() -> Iterator[BlockingPortal]:
    with start_blocking_portal() as portal:
        yield portal
        portal.call(portal.stop, True)  # requests a test left in flight end with it


class Request:
    """One request in flight: it holds a slot until the test ends it."""

    def __init__(self, portal: BlockingPortal, limiter: AdaptiveLimiter) -> None:
        self._portal = portal
        self._error: BaseException | None = None
        self._end: anyio.Event | None = None
        self._task, _ = portal.start_task(self._hold, limiter)

    async def _hold(self, limiter: AdaptiveLimiter, *, task_status: TaskStatus[None]) -> None:
        self._end = end = anyio.Event()
        taking = anyio.CancelScope(deadline=anyio.current_time() + 1)
        with taking, contextlib.suppress(RateLimited, BadRequest):
            async with limiter.slot():
                taking.deadline = math.inf  # taken: held for as long as the test wants
                task_status.started()
                await end.wait()
                if self._error is not None:
                    raise self._error

    def _finish(self, error: BaseException | None) -> None:
        self._error = error
        assert self._end is not None
        self._portal.call(self._end.set)
        self._task.result(timeout=1)

    def succeed(self) -> None:
        self._finish(None)

    def refuse(self, retry_after: float | None) -> None:
        """The server answered 429 (with `Retry-After` in seconds, or none)."""
        self._finish(RateLimited(retry_after=retry_after))

    def fail(self) -> None:
        """An error that says nothing about capacity."""
        self._finish(BadRequest("boom", status=400))


def fill_window(portal: BlockingPortal, limiter: AdaptiveLimiter) -> None:
    """Run one full window at the current limit: `limit` requests in flight, all succeed."""
    requests = [Request(portal, limiter) for _ in range(limiter.limit)]
    for request in requests:
        request.succeed()


def test_limit_starts_low_and_quadruples_each_round_trip_until_the_first_429(
    portal: BlockingPortal,
) -> None:
    limiter = AdaptiveLimiter(128, initial=2, clock=Clock())
    seen = [limiter.limit]
    for _ in range(3):
        fill_window(portal, limiter)
        seen.append(limiter.limit)
    assert seen == [2, 8, 32, 128]


def test_slow_start_growth_is_a_setting(portal: BlockingPortal) -> None:
    limiter = AdaptiveLimiter(64, initial=2, growth=2, clock=Clock())
    seen = [limiter.limit]
    for _ in range(4):
        fill_window(portal, limiter)
        seen.append(limiter.limit)
    assert seen == [2, 4, 8, 16, 32]


def test_the_servers_limit_is_found_by_the_first_429_only(portal: BlockingPortal) -> None:
    limiter = AdaptiveLimiter(64, initial=2, clock=Clock())
    for _ in range(2):
        fill_window(portal, limiter)
    assert not limiter.found_limit  # 32 reached, nothing refused: the server may take more
    requests = [Request(portal, limiter) for _ in range(32)]
    requests[-1].refuse(1.0)
    assert limiter.found_limit


def test_limit_never_exceeds_the_ceiling(portal: BlockingPortal) -> None:
    limiter = AdaptiveLimiter(5, initial=2, clock=Clock())
    for _ in range(10):
        fill_window(portal, limiter)
    assert limiter.limit == 5


def test_limit_does_not_grow_when_it_was_not_used(portal: BlockingPortal) -> None:
    limiter = AdaptiveLimiter(16, initial=4, clock=Clock())
    for _ in range(8):  # one request at a time: the limit of 4 is never reached
        Request(portal, limiter).succeed()
    assert limiter.limit == 4


def test_overload_takes_one_off_per_refused_request_down_to_what_the_server_took(
    portal: BlockingPortal,
) -> None:
    clock = Clock()
    limiter = AdaptiveLimiter(64, initial=8, clock=clock)
    fill_window(portal, limiter)  # 8 is known good; slow start goes to 32
    assert limiter.limit == 32
    requests = [Request(portal, limiter) for _ in range(16)]
    for request in requests[10:]:  # the server took 10 and refused 6
        request.refuse(None)
    assert limiter.limit == 10


def test_overload_counts_down_from_the_concurrency_sent_not_an_unfilled_limit(
    portal: BlockingPortal,
) -> None:
    limiter = AdaptiveLimiter(64, initial=8, clock=Clock())
    fill_window(portal, limiter)  # 8 is known good; slow start goes to 32
    requests = [Request(portal, limiter) for _ in range(12)]  # the 429s come before 16 are sent
    for request in requests[10:]:  # the server took 10 and refused 2
        request.refuse(None)
    assert limiter.limit == 10


def test_leaving_slow_start_no_more_fit_than_were_in_flight_before_the_first_refused(
    portal: BlockingPortal,
) -> None:
    clock = Clock()
    limiter = AdaptiveLimiter(64, initial=8, clock=clock)
    fill_window(portal, limiter)  # 8 is known good; slow start goes to 32
    requests = []
    for _ in range(16):
        clock.now += 0.001
        requests.append(Request(portal, limiter))
    # The server held 10: it refused the 11th, then took the 14th in a slot freed meanwhile.
    for request in requests[10:13] + requests[14:]:
        request.refuse(None)
    assert limiter.limit == 10  # counting the 5 refusals alone would leave 11


def test_overload_never_goes_below_the_level_before_the_last_increase(
    portal: BlockingPortal,
) -> None:
    clock = Clock()
    limiter = AdaptiveLimiter(64, initial=8, clock=clock)
    fill_window(portal, limiter)
    requests = [Request(portal, limiter) for _ in range(16)]
    for request in requests:  # everything refused: a storm, not a limit of zero
        request.refuse(None)
    assert limiter.limit == 8


def test_429s_for_requests_sent_before_an_earlier_decrease_are_ignored(
    portal: BlockingPortal,
) -> None:
    clock = Clock()
    limiter = AdaptiveLimiter(64, initial=8, clock=clock)
    fill_window(portal, limiter)
    old = [Request(portal, limiter) for _ in range(16)]
    old[15].refuse(None)  # epoch 0 -> 1: 15
    for request in old[:14]:
        request.fail()
    newer = [acquire_now_after(portal, limiter, clock) for _ in range(9)]
    newer[8].refuse(None)  # sent with 10 in flight, over the 8 known good: epoch 1 -> 2: 14
    assert limiter.limit == 14
    old[14].refuse(None)  # epoch 0: two decreases ago
    assert limiter.limit == 14


def test_429_at_the_known_good_level_steps_it_down(portal: BlockingPortal) -> None:
    clock = Clock()
    limiter = AdaptiveLimiter(64, initial=10, clock=clock)
    fill_window(portal, limiter)  # 10 known good -> 40
    requests = [Request(portal, limiter) for _ in range(20)]
    for request in requests[10:]:
        request.refuse(1.0)
    for request in requests[:10]:
        request.succeed()
    assert limiter.limit == 10
    clock.now += 2  # past the pause, long before any probe
    for _ in range(4):
        Request(portal, limiter).refuse(None)  # 429s at the known-good 10, answers between
        clock.now += 1
        fill_window(portal, limiter)
        assert limiter.limit == 10
    Request(portal, limiter).refuse(None)  # the fifth among the last answers: it shrank
    assert limiter.limit == 9


def test_an_isolated_429_at_the_known_good_level_only_pauses(portal: BlockingPortal) -> None:
    clock = Clock()
    limiter = AdaptiveLimiter(64, initial=10, clock=clock)
    fill_window(portal, limiter)  # 10 known good -> 40
    requests = [Request(portal, limiter) for _ in range(11)]
    requests[10].refuse(None)  # the server holds 10
    for request in requests[:10]:
        request.succeed()
    assert limiter.limit == 10
    for _ in range(20):  # 429s without Retry-After, one in every 4 windows: noise
        clock.now += 1
        Request(portal, limiter).refuse(None)
        assert limiter.cooldown.remaining > 0  # the run backs off for a moment
        assert limiter.limit >= 10  # never lowered (it may probe 11)
        clock.now += 1
        for _ in range(4):
            fill_window(portal, limiter)


def test_a_storm_at_the_known_good_level_pauses_but_keeps_the_level(
    portal: BlockingPortal,
) -> None:
    clock = Clock()
    limiter = AdaptiveLimiter(64, initial=8, clock=clock)
    fill_window(portal, limiter)  # 8 known good -> 32
    requests = [Request(portal, limiter) for _ in range(9)]
    requests[8].refuse(None)
    for request in requests[:8]:
        request.succeed()
    assert limiter.limit == 8
    for _ in range(10):  # every request of each burst refused, burst after burst
        clock.now += 100
        burst = [Request(portal, limiter) for _ in range(8)]
        for request in burst:
            request.refuse(None)
    assert limiter.limit == 8


def test_probing_the_level_that_failed_waits_longer_than_growing_below_it(
    portal: BlockingPortal,
) -> None:
    clock = Clock()
    limiter = AdaptiveLimiter(64, initial=4, hold=2, clock=clock)
    fill_window(portal, limiter)  # 4 good -> 8
    requests = [Request(portal, limiter) for _ in range(8)]
    requests[7].refuse(1.0)  # 429 at 8 -> 7, floor 4
    requests[6].refuse(1.0)  # refused too -> 6
    for t in requests[:6]:
        t.fail()
    assert limiter.limit == 6
    clock.now += 1.0  # the pause is over
    fill_window(portal, limiter)
    fill_window(portal, limiter)  # the hold after a decrease: 2 windows
    assert limiter.limit == 6  # 7 is where the server refused: that is a probe
    for _ in range(5):
        fill_window(portal, limiter)
    clock.now += 100.0
    fill_window(portal, limiter)
    assert limiter.limit == 6  # a probe waits for 200 x the 1 s pause
    clock.now += 100.0
    fill_window(portal, limiter)
    assert limiter.limit == 7


def test_each_failed_probe_doubles_the_wait_before_the_next(portal: BlockingPortal) -> None:
    clock = Clock()
    limiter = AdaptiveLimiter(64, initial=4, hold=1, clock=clock)
    fill_window(portal, limiter)  # 4 good -> 16
    requests = [Request(portal, limiter) for _ in range(6)]
    requests[5].refuse(1.0)  # the server holds 5
    for t in requests[:5]:
        t.succeed()
    assert limiter.limit == 5
    waits = []
    for _ in range(3):
        clock.now += 1.0  # past the pause
        probed_at = clock.now
        while limiter.limit == 5:
            clock.now += 10.0
            fill_window(portal, limiter)
        waits.append(clock.now - probed_at)
        probe = [Request(portal, limiter) for _ in range(6)]
        probe[5].refuse(1.0)  # 6 refused again
        for t in probe[:5]:
            t.succeed()
        assert limiter.limit == 5
    assert waits == [200.0, 400.0, 800.0]


def test_after_refusals_down_to_the_floor_regrowth_is_not_held_back(portal: BlockingPortal) -> None:
    clock = Clock()
    limiter = AdaptiveLimiter(64, initial=8, hold=1, clock=clock)
    fill_window(portal, limiter)  # 8 good -> 16
    requests = [Request(portal, limiter) for _ in range(16)]
    for request in requests:  # a storm refuses everything: down to the floor, 8
        request.refuse(1.0)
    assert limiter.limit == 8
    clock.now += 2
    for _ in range(4):
        fill_window(portal, limiter)
    assert limiter.limit > 9  # grows again without waiting for the probe spacing


def acquire_now_after(portal: BlockingPortal, limiter: AdaptiveLimiter, clock: Clock) -> Request:
    clock.now += 100
    return Request(portal, limiter)


def test_settled_is_the_time_weighted_median_of_the_late_run(portal: BlockingPortal) -> None:
    clock = Clock()
    limiter = AdaptiveLimiter(64, initial=2, clock=clock)
    clock.now += 1
    fill_window(portal, limiter)  # 8
    clock.now += 1
    fill_window(portal, limiter)  # 32
    clock.now += 8
    assert limiter.settled() == 32.0


def test_cooldown_retry_after_blocks_the_next_slot_until_the_instant() -> None:
    async def main() -> float:
        limiter = AdaptiveLimiter(4, initial=4)
        start = anyio.current_time()
        with contextlib.suppress(RateLimited):
            async with limiter.slot():
                raise RateLimited(retry_after=0.2)
        async with limiter.slot():
            return anyio.current_time() - start

    assert anyio.run(main) >= 0.2


def test_a_429_leaving_the_block_is_recorded_and_propagates() -> None:
    async def main() -> None:
        limiter = AdaptiveLimiter(4, initial=4, clock=Clock())
        with pytest.raises(RateLimited):
            async with limiter.slot():
                raise RateLimited(retry_after=1.0)
        assert limiter.rate_limited == 1
        assert limiter.in_flight == 0
        assert limiter.cooldown.remaining == pytest.approx(1.0)

    anyio.run(main)


def test_a_429_the_block_handled_is_recorded_by_saying_so() -> None:
    async def main() -> None:
        limiter = AdaptiveLimiter(4, initial=4, clock=Clock())
        async with limiter.slot() as slot:
            slot.rate_limited(2.0)
        assert limiter.rate_limited == 1
        assert limiter.found_limit
        assert limiter.cooldown.remaining == pytest.approx(2.0)

    anyio.run(main)


def test_another_error_frees_the_slot_and_says_nothing_about_capacity() -> None:
    async def main() -> None:
        limiter = AdaptiveLimiter(4, initial=1, clock=Clock())
        with pytest.raises(ServerError):
            async with limiter.slot():
                raise ServerError("boom", status=500)
        assert limiter.in_flight == 0
        assert limiter.rate_limited == 0
        assert not limiter.found_limit
        assert limiter.limit == 1  # neither a success towards growth nor a decrease

    anyio.run(main)


def test_a_slot_knows_when_it_was_sent_and_how_many_were_in_flight() -> None:
    async def main() -> None:
        clock = Clock()
        limiter = AdaptiveLimiter(4, initial=4, clock=clock)
        async with limiter.slot() as first:
            clock.now += 1
            async with limiter.slot() as second:
                assert (first.in_flight, second.in_flight) == (1, 2)
                assert second.sent_at - first.sent_at == pytest.approx(1.0)
                assert limiter.in_flight == 2
        assert limiter.in_flight == 0

    anyio.run(main)


def test_backoff_without_retry_after_grows_and_resets_on_success() -> None:
    clock = Clock()
    cooldown = Cooldown(base=1.0, cap=100.0, clock=clock, rng=lambda: 1.0)
    assert cooldown.backoff(sent_at=clock.now) == pytest.approx(1.0)
    clock.now += 5
    assert cooldown.backoff(sent_at=clock.now) == pytest.approx(2.0)
    clock.now += 5
    cooldown.reset()
    assert cooldown.backoff(sent_at=clock.now) == pytest.approx(1.0)


def test_backoff_is_not_grown_by_429s_for_requests_sent_before_it() -> None:
    clock = Clock()
    cooldown = Cooldown(base=1.0, cap=100.0, clock=clock, rng=lambda: 1.0)
    sent = clock.now
    clock.now += 0.1
    cooldown.backoff(sent_at=sent)
    assert cooldown.backoff(sent_at=sent) == pytest.approx(1.0)


def test_backoff_jitter_stays_between_half_and_full_delay() -> None:
    clock = Clock()
    cooldown = Cooldown(base=1.0, cap=100.0, clock=clock, rng=lambda: 0.0)
    assert cooldown.backoff(sent_at=clock.now) == pytest.approx(0.5)


def test_workers_wait_for_a_free_slot() -> None:
    async def main() -> int:
        limiter = AdaptiveLimiter(2, initial=2)
        peak = 0
        active = 0

        async def worker() -> None:
            nonlocal peak, active
            for _ in range(5):
                async with limiter.slot():
                    active += 1
                    peak = max(peak, active)
                    await anyio.sleep(0.001)
                    active -= 1

        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(worker)
        return peak

    assert anyio.run(main) == 2


def test_a_cancelled_waiter_does_not_swallow_a_freed_slot() -> None:
    async def main() -> None:
        limiter = AdaptiveLimiter(1, initial=1)
        got = anyio.Event()
        head = anyio.CancelScope()

        async def cancelled_waiter() -> None:
            with head:
                async with limiter.slot():
                    pass

        async def waiter() -> None:
            async with limiter.slot():
                got.set()

        async with anyio.create_task_group() as tg:
            async with limiter.slot():
                tg.start_soon(cancelled_waiter)  # first in the queue
                await anyio.wait_all_tasks_blocked()
                tg.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()
                head.cancel()  # the head of the queue is being cancelled...
            # ...when the slot freed by leaving the block above wakes it
            with anyio.fail_after(1):
                await got.wait()

    anyio.run(main)
