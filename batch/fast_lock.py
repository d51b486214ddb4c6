"""A lock with httpcore's `AsyncLock` interface that does not yield when it is free.

anyio's Lock yields to the event loop on every uncontended acquire (a shielded cancel scope
and a loop turn), so that a task looping on a lock cannot starve the others. httpcore takes
its connection locks three times per request, where that fairness buys nothing: a request
awaits its socket right after. `batch.transport` swaps them for this one.
"""

from __future__ import annotations

import anyio


class FastLock:
    """`async with lock:`; taking it when free does not yield (waiting for it still does,
    first come first served)."""

    def __init__(self) -> None:
        self._lock = anyio.Lock(fast_acquire=True)

    def locked(self) -> bool:
        return self._lock.locked()

    async def __aenter__(self) -> FastLock:
        await self._lock.acquire()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._lock.release()
