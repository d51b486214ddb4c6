"""The peers gigabatch is measured against: plain asyncio scripts on the official SDK.

They are what a user writes without gigabatch: a semaphore at the known stream limit and one
call per job. On a 429 they sleep the server's Retry-After (or 0.5 s) and try again, so every
job is answered and their throughput is comparable to a full gigabatch run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from gigachat import GigaChat
from gigachat.exceptions import RateLimitError


@dataclass(frozen=True)
class PeerResult:
    jobs: int
    wall_seconds: float
    cpu_seconds: float
    rate_limited: int

    @property
    def jobs_per_second(self) -> float:
        return self.jobs / self.wall_seconds if self.wall_seconds else 0.0


def _sdk(base_url: str, auth_url: str, credentials: str, scope: str, connections: int) -> GigaChat:
    return GigaChat(
        model="GigaChat",
        base_url=base_url,
        auth_url=auth_url,
        credentials=credentials,
        scope=scope,
        timeout=120.0,
        max_connections=connections,
    )


async def _drive(
    items: Sequence[Any], concurrency: int, call: Callable[[Any], Awaitable[object]]
) -> tuple[int, int]:
    """Run `call` on every item, at most `concurrency` at once; returns (done, 429s)."""
    gate = asyncio.Semaphore(concurrency)
    limited = 0

    async def one(item: Any) -> None:
        nonlocal limited
        async with gate:
            while True:
                try:
                    await call(item)
                    return
                except RateLimitError as exc:
                    limited += 1
                    await asyncio.sleep(exc.retry_after or 0.5)

    await asyncio.gather(*(one(item) for item in items))
    return len(items), limited


def _measure(coro_factory: Callable[[], Coroutine[Any, Any, tuple[int, int]]]) -> PeerResult:
    wall0, cpu0 = time.perf_counter(), time.process_time()
    done, limited = asyncio.run(coro_factory())
    return PeerResult(done, time.perf_counter() - wall0, time.process_time() - cpu0, limited)


def sdk_embeddings_one_per_request(
    texts: Sequence[str],
    *,
    base_url: str,
    auth_url: str,
    credentials: str,
    scope: str,
    concurrency: int,
    model: str = "Embeddings",
) -> PeerResult:
    """One text per `aembeddings` call, `concurrency` calls in flight."""

    async def main() -> tuple[int, int]:
        giga = _sdk(base_url, auth_url, credentials, scope, concurrency)
        try:
            return await _drive(texts, concurrency, lambda t: giga.aembeddings([t], model=model))
        finally:
            await giga.aclose()

    return _measure(main)


def sdk_chat(
    prompts: Sequence[str],
    *,
    base_url: str,
    auth_url: str,
    credentials: str,
    scope: str,
    concurrency: int,
) -> PeerResult:
    """One `achat` call per prompt, `concurrency` calls in flight."""

    async def main() -> tuple[int, int]:
        giga = _sdk(base_url, auth_url, credentials, scope, concurrency)
        try:
            return await _drive(prompts, concurrency, giga.achat)
        finally:
            await giga.aclose()

    return _measure(main)
