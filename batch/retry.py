"""Per-request retry of retryable API errors (tenacity): capped exponential backoff with
jitter, up to `max_attempts` failed sends and `max_elapsed` seconds.

429s are special: the run-wide `Cooldown` already makes every worker wait as the server
asked, so a 429 is retried at once (the next send waits for its limiter slot) and
does not use up `max_attempts`, which is for errors that say something about the request or
the server's health (5xx, resets, timeouts). A request stuck behind 429s still gives up when
`max_elapsed` has passed since its first send. A request held back before it left
(`SendHeld`) is treated the same way. An `excused` error (one the run attributes to an
outage, not to the request) never counts and never ends the request: the run's outage
handling decides when it goes again and when the run gives up.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import anyio
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from batch.backoff import backoff_delay
from batch.errors import RateLimited, RetryableError, RetryAfterTooLong, SendHeld

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5
    max_elapsed: float = 300.0
    initial: float = 0.5
    max_wait: float = 20.0
    jitter: float = 0.5
    # The longest Retry-After a run waits out; a longer one stops it (RetryAfterTooLong).
    max_retry_after: float = 120.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")


@contextlib.contextmanager
def retry_after_capped(policy: RetryPolicy) -> Iterator[None]:
    """Around a send inside a limiter slot: a 429 asking for a pause longer than the
    policy's `max_retry_after` leaves as RetryAfterTooLong (fatal), so the slot never
    records that pause and no worker waits an hour for it: the run stops, to run later."""
    try:
        yield
    except RateLimited as exc:
        wait = exc.retry_after
        if wait is not None and wait > policy.max_retry_after:
            raise RetryAfterTooLong(wait, policy.max_retry_after, exc) from None
        raise


Excused = Callable[[BaseException], bool]


def _never(exc: BaseException) -> bool:
    return False


class _Budget:
    """The stop and wait decisions for one request, counting failures that are not 429s."""

    def __init__(
        self,
        policy: RetryPolicy,
        clock: Callable[[], float],
        started: float,
        excused: Excused = _never,
    ) -> None:
        self.policy = policy
        self.clock = clock
        self.started = started
        self.excused = excused
        self.failures = 0

    def give_up(self, exc: BaseException | None) -> bool:
        if exc is not None and self.excused(exc):
            return False
        if not isinstance(exc, RateLimited | SendHeld):
            self.failures += 1
            if self.failures >= self.policy.max_attempts:
                return True
        return self.clock() - self.started >= self.policy.max_elapsed

    def delay(self, exc: BaseException | None) -> float:
        if isinstance(exc, RateLimited | SendHeld) or (exc is not None and self.excused(exc)):
            return 0.0
        p = self.policy
        backoff = backoff_delay(
            self.failures - 1, base=p.initial, cap=p.max_wait, spread=p.jitter
        )
        left = p.max_elapsed - (self.clock() - self.started)
        return max(0.0, min(backoff, left))

    def stop(self, state: RetryCallState) -> bool:
        return self.give_up(state.outcome.exception() if state.outcome else None)

    def wait(self, state: RetryCallState) -> float:
        return self.delay(state.outcome.exception() if state.outcome else None)


async def call_with_retry(
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    clock: Callable[[], float] = time.monotonic,
    excused: Excused = _never,
) -> T:
    """Run `attempt` until it returns, retrying RetryableError per `policy`; the last error
    is re-raised when the policy gives up. Other errors propagate at once. Errors for
    which `excused` says True are retried at once and never counted."""
    started = clock()
    # Fast path: most requests succeed first time, and building tenacity's machinery per
    # request costs CPU that a 1,000-requests-per-second run notices.
    try:
        return await attempt()
    except RetryableError as exc:
        budget = _Budget(policy, clock, started, excused)
        if budget.give_up(exc):
            raise
        pause = budget.delay(exc)
    await anyio.sleep(pause)
    retrying = AsyncRetrying(
        sleep=anyio.sleep,
        stop=budget.stop,
        wait=budget.wait,
        retry=retry_if_exception_type(RetryableError),
        reraise=True,
    )
    async for try_ in retrying:
        with try_:
            return await attempt()
    raise AssertionError("unreachable: tenacity re-raises or returns")  # pragma: no cover
