"""Stalls: a request in flight far longer than answers take stops holding a limiter slot."""

from __future__ import annotations

from dataclasses import dataclass

import anyio

from batch.limiter import AdaptiveLimiter
from batch.stalls import MIN_STALL_S, Stalls


@dataclass(eq=False)
class Request:
    sent_at: float
    stalled: bool = False


def test_a_request_ten_typical_answers_late_is_stalled_once() -> None:
    stalls = Stalls()
    for i in range(5):
        done = Request(sent_at=float(i))
        stalls.sent(done)
        stalls.ended(done, i + 0.5, answered=True)  # answers take 0.5 s
    hung, fresh = Request(sent_at=10.0), Request(sent_at=14.0)
    stalls.sent(hung)
    stalls.sent(fresh)
    assert stalls.newly_stalled(14.9) == 0  # 4.9 s: under ten answers' time
    assert stalls.newly_stalled(15.1) == 1 and hung.stalled and not fresh.stalled
    assert stalls.newly_stalled(16.0) == 0  # marked once


def test_nothing_stalls_before_the_first_answer_or_under_the_minimum() -> None:
    stalls = Stalls()
    waiting = Request(sent_at=0.0)
    stalls.sent(waiting)
    assert stalls.newly_stalled(1000.0) == 0  # no answer yet: no idea what is slow
    done = Request(sent_at=0.0)
    stalls.sent(done)
    stalls.ended(done, 0.01, answered=True)
    assert stalls.newly_stalled(MIN_STALL_S - 0.1) == 0
    assert stalls.newly_stalled(MIN_STALL_S + 0.1) == 1


def test_a_hung_request_frees_its_slot_for_the_next_one() -> None:
    limiter = AdaptiveLimiter(1, initial=1)
    order: list[str] = []

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(limiter.watch_stalls, 0.05)
            async with limiter.slot():
                await anyio.sleep(0.01)  # one quick answer sets the typical time
            hung = anyio.Event()

            async def hang() -> None:
                async with limiter.slot():
                    order.append("hung")
                    hung.set()
                    await anyio.sleep(30)

            tg.start_soon(hang)
            await hung.wait()
            with anyio.fail_after(MIN_STALL_S + 2):
                async with limiter.slot():  # limit 1, one in flight: only a stall frees it
                    order.append("next")
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert order == ["hung", "next"]
