"""The coordinator and a worker's leased slots, in one process (no Ray): leases batch
slots, reports free them, a 429 pauses every worker, a dead worker's slots come back, and
a rejected token is refreshed once for the cluster; failures reported from several workers
begin an outage the coordinator probes with one slot at a time."""

from __future__ import annotations

import time

import anyio
import pytest

from batch.api_types import Usage
from batch.cluster.coordinator import OK, REFUSED, Coordinator, Report
from batch.cluster.leases import ClusterAuthenticator, HeldReservation, LeasedLimiter
from batch.errors import ApiError, AuthenticationFailed, ConnectionFailed, RateLimited
from batch.sending import NotSent
from batch.settings import ClientSettings


def run(fn: object) -> None:
    anyio.run(fn)  # type: ignore[arg-type]


def test_a_lease_grants_the_free_slots_it_wants_at_once() -> None:
    async def main() -> None:
        coordinator = Coordinator(8, initial=4)
        lease = await coordinator.lease("w0", 6, [])
        assert len(lease.slots) == 4 and lease.limit == 4

    run(main)


def test_a_lease_waits_until_a_slot_is_reported_back() -> None:
    async def main() -> None:
        coordinator = Coordinator(8, initial=2)
        first = await coordinator.lease("w0", 2, [])
        with anyio.move_on_after(0.05) as waited:
            await coordinator.lease("w1", 1, [])
        assert waited.cancelled_caught
        await coordinator.report("w0", [Report(first.slots[0], OK)])
        with anyio.fail_after(1):
            again = await coordinator.lease("w1", 1, [])
        assert len(again.slots) == 1

    run(main)


def test_a_dead_workers_slots_are_freed_by_its_next_incarnation() -> None:
    async def main() -> None:
        coordinator = Coordinator(4, initial=4)
        await coordinator.lease("worker-0/old", 3, [])
        await coordinator.lease("worker-1/x", 1, [])
        assert await coordinator.forget("worker-0/", keep="worker-0/new") == 3
        with anyio.fail_after(1):
            lease = await coordinator.lease("worker-0/new", 3, [])
        assert len(lease.slots) == 3

    run(main)


def test_a_429_pauses_every_worker_until_retry_after() -> None:
    async def main() -> None:
        coordinator = Coordinator(8, initial=4)
        lease = await coordinator.lease("w0", 1, [])
        started = time.time()
        async with anyio.create_task_group() as tg:
            heard: list[float] = []

            async def other_worker() -> None:
                heard.append(await coordinator.next_pause(0.0))

            tg.start_soon(other_worker)
            await anyio.sleep(0.01)
            await coordinator.report("w0", [Report(lease.slots[0], REFUSED, 0.3)])
        assert heard and heard[0] >= started + 0.29
        granted = await coordinator.lease("w1", 1, [])
        assert time.time() >= started + 0.29  # no slot inside the pause
        assert granted.pause_until == heard[0]

    run(main)


def test_leased_slots_hold_the_limit_with_few_coordinator_calls() -> None:
    async def main() -> None:
        coordinator = Coordinator(4, initial=4)
        limiter = LeasedLimiter(coordinator, "w0")
        in_flight = peak = 0

        async def request() -> None:
            nonlocal in_flight, peak
            async with limiter.slot():
                in_flight += 1
                peak = max(peak, in_flight)
                await anyio.sleep(0.005)
                in_flight -= 1

        async with anyio.create_task_group() as background:
            background.start_soon(limiter.run)
            async with anyio.create_task_group() as tg:
                for _ in range(200):
                    tg.start_soon(request)
            background.cancel_scope.cancel()
        await limiter.give_back()
        report = await coordinator.summary()
        assert peak <= 4
        assert report.slots == 200
        assert report.leases < 200 / 2  # slots leased several at a time
        assert coordinator.limiter.in_flight == 0

    run(main)


def test_a_429_in_a_leased_slot_pauses_this_worker_at_once() -> None:
    async def main() -> None:
        coordinator = Coordinator(4, initial=2)
        limiter = LeasedLimiter(coordinator, "w0")
        with pytest.raises(RateLimited):
            async with limiter.slot():
                raise RateLimited(retry_after=0.2)
        assert limiter.pause_remaining > 0.15
        await limiter.flush()
        assert coordinator.limiter.cooldown.remaining > 0.1

    run(main)


def test_a_rejected_token_is_refreshed_once_for_every_worker() -> None:
    async def main() -> None:
        coordinator = Coordinator(4)
        settings = ClientSettings(base_url="http://127.0.0.1:1/api/v1")
        workers = [ClusterAuthenticator(settings, coordinator) for _ in range(3)]
        await coordinator.publish_token("Bearer one")
        assert [await w.authorization() for w in workers] == [("Bearer one", 1)] * 3
        refreshes = 0

        async def driver() -> None:
            nonlocal refreshes
            while await coordinator.token_wanted(0.2):
                refreshes += 1
                await coordinator.publish_token("Bearer two")

        async with anyio.create_task_group() as tg:
            tg.start_soon(driver)
            for w in workers:
                tg.start_soon(w.unauthorized, 1, ApiError("rejected", status=401))
        assert refreshes == 1
        assert [await w.authorization() for w in workers] == [("Bearer two", 2)] * 3
        await coordinator.publish_token(None, "the key was revoked")
        with pytest.raises(AuthenticationFailed, match="revoked"):
            await workers[0].unauthorized(2, ApiError("rejected", status=401))

    run(main)


async def _fail_away(limiter: LeasedLimiter, request: object) -> None:
    with pytest.raises(ConnectionFailed):
        async with limiter.slot(owner=request):
            raise ConnectionFailed("connection refused")


def test_failures_across_workers_begin_an_outage_that_leases_one_probe_at_a_time() -> None:
    async def main() -> None:
        coordinator = Coordinator(4, initial=4)
        workers = [LeasedLimiter(coordinator, f"w{i}") for i in range(2)]
        for i in range(4):  # four requests, two on each worker
            await _fail_away(workers[i % 2], object())
        # The worker whose failure began it knows before its sender sees the error.
        assert workers[1].outage.excuses(ConnectionFailed("refused"))
        since = await coordinator.next_outage(0.0)  # the driver hears of it
        assert 0 < since <= time.time()
        probe = await coordinator.lease("w0", 3, [])
        assert len(probe.slots) == 1 and probe.outage_since == since
        with anyio.move_on_after(0.1) as waited:
            await coordinator.lease("w1", 1, [])
        assert waited.cancelled_caught  # a second probe waits for the first
        await coordinator.report("w0", [Report(probe.slots[0], OK)])
        with anyio.fail_after(1):
            after = await coordinator.lease("w1", 2, [])
        assert after.outage_since == 0.0 and len(after.slots) == 2
        with anyio.fail_after(1):
            assert await coordinator.next_outage(since) == 0.0
        assert (await coordinator.summary()).outages == 1

    run(main)


def test_one_requests_failures_on_one_worker_are_not_an_outage() -> None:
    async def main() -> None:
        coordinator = Coordinator(4, initial=4)
        limiter = LeasedLimiter(coordinator, "w0")
        request = object()
        for _ in range(5):
            await _fail_away(limiter, request)
        assert not limiter.outage.active
        assert (await coordinator.lease("w0", 2, [])).outage_since == 0.0

    run(main)


def test_an_answered_error_ends_the_outage_for_every_worker() -> None:
    async def main() -> None:
        coordinator = Coordinator(4, initial=4)
        workers = [LeasedLimiter(coordinator, f"w{i}") for i in range(2)]
        for i in range(4):
            await _fail_away(workers[i % 2], object())
        assert coordinator.outage_since > 0
        with pytest.raises(ApiError):
            async with workers[0].slot():
                raise ApiError("bad request", status=400)
        await workers[0].flush()
        assert coordinator.outage_since == 0.0
        await workers[1].flush()
        assert (await coordinator.lease("w1", 1, [])).outage_since == 0.0

    run(main)


def test_a_try_billed_unseen_uses_up_the_drivers_reservation() -> None:
    async def main() -> None:
        held = HeldReservation()
        ceiling = Usage(prompt_tokens=10, completion_tokens=5)
        reservation = await held.reserve(ceiling, "GigaChat")
        assert reservation.tokens == 15
        held.charge_unseen(reservation)
        with pytest.raises(NotSent):  # the driver must reserve again before a retry
            await held.reserve(ceiling, "GigaChat")
        assert held.used_up

    run(main)
