"""The shape every pass over a job file shares: one producer -> a bounded stream -> a fixed
pool of workers. Backpressure comes from the stream (two items per worker), so memory stays
flat whatever the input's size, and there is never a task per item.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

T = TypeVar("T")

Produce = Callable[[MemoryObjectSendStream[T]], Awaitable[None]]
Handle = Callable[[T], Awaitable[bool]]


async def run_pipeline(produce: Produce[T], handle: Handle[T], *, workers: int) -> None:
    """Run `produce` (it sends items; the stream is closed when it returns) against
    `workers` tasks that call `handle` on each item until the stream is drained; a worker
    whose `handle` returns False stops taking items (once all have, production ends).
    Returns when every worker is done.
    An exception from `produce` or `handle` cancels the pipeline and propagates."""
    send, receive = anyio.create_memory_object_stream[T](workers * 2)
    async with anyio.create_task_group() as tg:
        async with receive:
            for _ in range(workers):
                tg.start_soon(_work, receive.clone(), handle)
        # Once every worker has stopped, a send breaks: what was not sent stays pending.
        with contextlib.suppress(anyio.BrokenResourceError):
            async with send:
                await produce(send)


async def _work(receive: MemoryObjectReceiveStream[T], handle: Handle[T]) -> None:
    async with receive:
        while True:
            try:
                item = await receive_soon(receive)
            except anyio.EndOfStream:
                return
            if not await handle(item):
                return


async def receive_soon(receive: MemoryObjectReceiveStream[T]) -> T:
    """The next item: at once when one is waiting, else as `receive()` waits for it.
    anyio's `receive()` yields to the event loop first even when an item is there; a
    worker whose every item then awaits the network need not pay that loop turn."""
    try:
        return receive.receive_nowait()
    except anyio.WouldBlock:
        return await receive.receive()


async def send_soon(send: MemoryObjectSendStream[T], item: T, *, shield: bool = False) -> None:
    """Hand `item` over at once when the stream has room (or a receiver waiting), else wait
    as `send()` does, shielded from cancellation if `shield`; like `receive_soon`, no loop
    turn (and no cancel scope) when nothing has to wait."""
    try:
        send.send_nowait(item)
    except anyio.WouldBlock:
        with anyio.CancelScope(shield=shield):
            await send.send(item)
