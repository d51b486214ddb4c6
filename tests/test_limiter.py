"""AdaptiveLimiter and Cooldown: AIMD between 1 and the ceiling, and the run-wide pause."""

from __future__ import annotations

import anyio
import pytest

from batch.limiter import AdaptiveLimiter, Cooldown, Ticket


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def fill_window(limiter: AdaptiveLimiter) -> None:
    """Run one full window at the current limit: `limit` requests in flight, all succeed."""
    tickets = [acquire_now(limiter) for _ in range(limiter.limit)]
    for ticket in tickets:
        limiter.succeeded(ticket)


def acquire_now(limiter: AdaptiveLimiter) -> Ticket:
    async def go() -> Ticket:
        with anyio.fail_after(1):
            return await limiter.acquire()

    return anyio.run(go)


def test_limit_starts_low_and_quadruples_each_round_trip_until_the_first_429() -> None:
    limiter = AdaptiveLimiter(128, initial=2, clock=Clock())
    seen = [limiter.limit]
    for _ in range(3):
        fill_window(limiter)
        seen.append(limiter.limit)
    assert seen == [2, 8, 32, 128]


def test_slow_start_growth_is_a_setting() -> None:
    limiter = AdaptiveLimiter(64, initial=2, growth=2, clock=Clock())
    seen = [limiter.limit]
    for _ in range(4):
        fill_window(limiter)
        seen.append(limiter.limit)
    assert seen == [2, 4, 8, 16, 32]


def test_the_servers_limit_is_found_by_the_first_429_only() -> None:
    limiter = AdaptiveLimiter(64, initial=2, clock=Clock())
    for _ in range(2):
        fill_window(limiter)
    assert not limiter.found_limit  # 32 reached, nothing refused: the server may take more
    tickets = [acquire_now(limiter) for _ in range(32)]
    limiter.rate_limited_by_server(tickets[-1], 1.0)
    assert limiter.found_limit


def test_limit_never_exceeds_the_ceiling() -> None:
    limiter = AdaptiveLimiter(5, initial=2, clock=Clock())
    for _ in range(10):
        fill_window(limiter)
    assert limiter.limit == 5


def test_limit_does_not_grow_when_it_was_not_used() -> None:
    limiter = AdaptiveLimiter(16, initial=4, clock=Clock())
    for _ in range(8):  # one request at a time: the limit of 4 is never reached
        limiter.succeeded(acquire_now(limiter))
    assert limiter.limit == 4


def test_overload_takes_one_off_per_refused_request_down_to_what_the_server_took() -> None:
    clock = Clock()
    limiter = AdaptiveLimiter(64, initial=8, clock=clock)
    fill_window(limiter)  # 8 is known good; slow start goes to 32
    assert limiter.limit == 32
    tickets = [acquire_now(limiter) for _ in range(16)]
    for ticket in tickets[10:]:  # the server took 10 and refused 6
        limiter.rate_limited_by_server(ticket, None)
    assert limiter.limit == 10


def test_overload_counts_down_from_the_concurrency_sent_not_an_unfilled_limit() -> None:
    limiter = AdaptiveLimiter(64, initial=8, clock=Clock())
    fill_window(limiter)  # 8 is known good; slow start goes to 32
    tickets = [acquire_now(limiter) for _ in range(12)]  # the 429s come before 16 are sent
    for ticket in tickets[10:]:  # the server took 10 and refused 2
        limiter.rate_limited_by_server(ticket, None)
    assert limiter.limit == 10


def test_leaving_slow_start_no_more_fit_than_were_in_flight_before_the_first_refused() -> None:
    clock = Clock()
    limiter = AdaptiveLimiter(64, initial=8, clock=clock)
    fill_window(limiter)  # 8 is known good; slow start goes to 32
    tickets = []
    for _ in range(16):
        clock.now += 0.001
        tickets.append(acquire_now(limiter))
    # The server held 10: it refused the 11th, then took the 14th in a slot freed meanwhile.
    for ticket in tickets[10:13] + tickets[14:]:
        limiter.rate_limited_by_server(ticket, None)
    assert limiter.limit == 10  # counting the 5 refusals alone would leave 11


def test_overload_never_goes_below_the_level_before_the_last_increase() -> None:
    clock = Clock()
    limiter = AdaptiveLimiter(64, initial=8, clock=clock)
    fill_window(limiter)
    tickets = [acquire_now(limiter) for _ in range(16)]
    for ticket in tickets:  # everything refused: a storm, not a limit of zero
        limiter.rate_limited_by_server(ticket, None)
    assert limiter.limit == 8


def test_429s_for_requests_sent_before_an_earlier_decrease_are_ignored() -> None:
    clock = Clock()
    limiter = AdaptiveLimiter(64, initial=8, clock=clock)
    fill_window(limiter)
    old = [acquire_now(limiter) for _ in range(16)]
    limiter.rate_limited_by_server(old[15], None)  # epoch 0 -> 1: 15
    for ticket in old[:14]:
        limiter.release(ticket)
    newer = acquire_now_after(limiter, clock)
    limiter.rate_limited_by_server(newer, None)  # a new overload: epoch 1 -> 2: 14
    assert limiter.limit == 14
    limiter.rate_limited_by_server(old[14], None)  # epoch 0: two decreases ago
    assert limiter.limit == 14


def test_429_at_the_known_good_level_steps_it_down() -> None:
    clock = Clock()
    limiter = AdaptiveLimiter(64, initial=10, clock=clock)
    fill_window(limiter)  # 10 known good -> 20
    tickets = [acquire_now(limiter) for _ in range(20)]
    for ticket in tickets[10:]:
        limiter.rate_limited_by_server(ticket, None)
    for ticket in tickets[:10]:
        limiter.succeeded(ticket)
    assert limiter.limit == 10
    clock.now += 100  # past the pause
    ticket = acquire_now(limiter)
    limiter.rate_limited_by_server(ticket, None)  # 429 at 10: the server shrank
    assert limiter.limit == 9


def test_probing_the_level_that_failed_waits_longer_than_growing_below_it() -> None:
    clock = Clock()
    limiter = AdaptiveLimiter(64, initial=4, hold=2, clock=clock)
    fill_window(limiter)  # 4 good -> 8
    tickets = [acquire_now(limiter) for _ in range(8)]
    limiter.rate_limited_by_server(tickets[7], 1.0)  # 429 at 8 -> 7, floor 4
    limiter.rate_limited_by_server(tickets[6], 1.0)  # refused too -> 6
    for t in tickets[:6]:
        limiter.release(t)
    assert limiter.limit == 6
    clock.now += 1.0  # the pause is over
    fill_window(limiter)
    fill_window(limiter)  # the hold after a decrease: 2 windows
    assert limiter.limit == 6  # 7 is where the server refused: that is a probe
    for _ in range(5):
        fill_window(limiter)
    clock.now += 100.0
    fill_window(limiter)
    assert limiter.limit == 6  # a probe waits for 200 x the 1 s pause
    clock.now += 100.0
    fill_window(limiter)
    assert limiter.limit == 7


def test_each_failed_probe_doubles_the_wait_before_the_next() -> None:
    clock = Clock()
    limiter = AdaptiveLimiter(64, initial=4, hold=1, clock=clock)
    fill_window(limiter)  # 4 good -> 16
    tickets = [acquire_now(limiter) for _ in range(6)]
    limiter.rate_limited_by_server(tickets[5], 1.0)  # the server holds 5
    for t in tickets[:5]:
        limiter.succeeded(t)
    assert limiter.limit == 5
    waits = []
    for _ in range(3):
        clock.now += 1.0  # past the pause
        probed_at = clock.now
        while limiter.limit == 5:
            clock.now += 10.0
            fill_window(limiter)
        waits.append(clock.now - probed_at)
        probe = [acquire_now(limiter) for _ in range(6)]
        limiter.rate_limited_by_server(probe[5], 1.0)  # 6 refused again
        for t in probe[:5]:
            limiter.succeeded(t)
        assert limiter.limit == 5
    assert waits == [200.0, 400.0, 800.0]


def test_after_refusals_down_to_the_floor_regrowth_is_not_held_back() -> None:
    clock = Clock()
    limiter = AdaptiveLimiter(64, initial=8, hold=1, clock=clock)
    fill_window(limiter)  # 8 good -> 16
    tickets = [acquire_now(limiter) for _ in range(16)]
    for ticket in tickets:  # a storm refuses everything: down to the floor, 8
        limiter.rate_limited_by_server(ticket, 1.0)
    assert limiter.limit == 8
    clock.now += 2
    for _ in range(4):
        fill_window(limiter)
    assert limiter.limit > 9  # grows again without waiting for the probe spacing


def acquire_now_after(limiter: AdaptiveLimiter, clock: Clock) -> Ticket:
    clock.now += 100
    return acquire_now(limiter)


def test_settled_is_the_time_weighted_median_of_the_late_run() -> None:
    clock = Clock()
    limiter = AdaptiveLimiter(64, initial=2, clock=clock)
    clock.now += 1
    fill_window(limiter)  # 8
    clock.now += 1
    fill_window(limiter)  # 32
    clock.now += 8
    assert limiter.settled() == 32.0


def test_cooldown_retry_after_blocks_acquire_until_the_instant() -> None:
    async def main() -> float:
        limiter = AdaptiveLimiter(4, initial=4)
        first = await limiter.acquire()
        start = anyio.current_time()
        limiter.rate_limited_by_server(first, 0.2)
        await limiter.acquire()
        return anyio.current_time() - start

    assert anyio.run(main) >= 0.2


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
                ticket = await limiter.acquire()
                active += 1
                peak = max(peak, active)
                await anyio.sleep(0.001)
                active -= 1
                limiter.release(ticket)

        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(worker)
        return peak

    assert anyio.run(main) == 2


def test_a_cancelled_waiter_does_not_swallow_a_freed_slot() -> None:
    async def main() -> None:
        limiter = AdaptiveLimiter(1, initial=1)
        held = await limiter.acquire()
        got = anyio.Event()
        head = anyio.CancelScope()

        async def cancelled_waiter() -> None:
            with head:
                limiter.release(await limiter.acquire())

        async def waiter() -> None:
            await limiter.acquire()
            got.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(cancelled_waiter)  # first in the queue
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            head.cancel()  # the head of the queue is being cancelled...
            limiter.release(held)  # ...when the freed slot wakes it
            with anyio.fail_after(1):
                await got.wait()

    anyio.run(main)
