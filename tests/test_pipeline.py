"""run_pipeline: one producer, a bounded stream, a fixed pool of workers."""

from __future__ import annotations

import anyio
import pytest
from anyio.streams.memory import MemoryObjectSendStream

from batch.pipeline import run_pipeline


def test_every_item_is_handled_once_by_at_most_the_pool() -> None:
    handled: list[int] = []
    active = peak = 0

    async def produce(send: MemoryObjectSendStream[int]) -> None:
        for item in range(50):
            await send.send(item)

    async def handle(item: int) -> bool:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await anyio.sleep(0.001)
        active -= 1
        handled.append(item)
        return True

    anyio.run(lambda: run_pipeline(produce, handle, workers=3))
    assert sorted(handled) == list(range(50))
    assert peak == 3


def test_the_producer_waits_while_the_stream_is_full() -> None:
    sent = 0
    release = anyio.Event()

    async def produce(send: MemoryObjectSendStream[int]) -> None:
        nonlocal sent
        for item in range(100):
            await send.send(item)
            sent += 1

    async def handle(item: int) -> bool:
        await release.wait()
        return True

    async def main() -> int:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: run_pipeline(produce, handle, workers=2))
            await anyio.wait_all_tasks_blocked()
            ahead = sent
            release.set()
        return ahead

    # Two items taken by the workers plus a buffer of two per worker: no more is read.
    assert anyio.run(main) == 2 + 4


def test_a_worker_whose_handler_says_stop_takes_no_more_items() -> None:
    handled: list[int] = []

    async def produce(send: MemoryObjectSendStream[int]) -> None:
        for item in range(3):
            await send.send(item)

    async def handle(item: int) -> bool:
        handled.append(item)
        return False

    anyio.run(lambda: run_pipeline(produce, handle, workers=1))
    assert handled == [0]


def test_an_error_of_the_producer_propagates() -> None:
    async def produce(send: MemoryObjectSendStream[int]) -> None:
        raise ValueError("the input changed")

    async def handle(item: int) -> bool:
        return True

    with pytest.raises(Exception) as caught:  # an exception group, as task groups raise
        anyio.run(lambda: run_pipeline(produce, handle, workers=2))
    assert caught.group_contains(ValueError, match="the input changed")
