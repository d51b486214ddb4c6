"""Per-request retry: which errors retry, how many times, and how 429s are counted."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import pytest

from batch.errors import BadRequest, FatalError, RateLimited, RetryAfterTooLong, ServerError
from batch.retry import RetryPolicy, call_with_retry, retry_after_capped

FAST = RetryPolicy(max_attempts=3, initial=0.001, max_wait=0.002, jitter=0.0)


def scripted(*errors: Exception | None) -> tuple[Callable[[], Awaitable[str]], list[int]]:
    """An attempt function raising the given errors in turn, then returning "ok"."""
    calls = [0]

    async def attempt() -> str:
        i = calls[0]
        calls[0] += 1
        error = errors[i] if i < len(errors) else None
        if error is not None:
            raise error
        return "ok"

    return attempt, calls


def test_retryable_errors_are_retried_until_success() -> None:
    attempt, calls = scripted(ServerError("busy"), ServerError("busy"))
    assert anyio.run(call_with_retry, attempt, FAST) == "ok"
    assert calls[0] == 3


def test_gives_up_after_max_attempts_with_the_last_error() -> None:
    attempt, calls = scripted(*(ServerError(f"busy {i}") for i in range(5)))
    with pytest.raises(ServerError, match="busy 2"):
        anyio.run(call_with_retry, attempt, FAST)
    assert calls[0] == 3


def test_permanent_errors_are_not_retried() -> None:
    attempt, calls = scripted(BadRequest("no"))
    with pytest.raises(BadRequest):
        anyio.run(call_with_retry, attempt, FAST)
    assert calls[0] == 1


def test_429s_do_not_use_up_the_attempts() -> None:
    attempt, calls = scripted(
        RateLimited(), RateLimited(), RateLimited(), RateLimited(), ServerError("x"), None
    )
    assert anyio.run(call_with_retry, attempt, FAST) == "ok"
    assert calls[0] == 6


def test_429s_stop_at_max_elapsed() -> None:
    attempt, calls = scripted(*(RateLimited() for _ in range(10_000)))
    policy = RetryPolicy(max_attempts=3, max_elapsed=0.05, initial=0.001, jitter=0.0)

    async def slow_attempt() -> str:
        await anyio.sleep(0.01)
        return await attempt()

    with pytest.raises(RateLimited):
        anyio.run(call_with_retry, slow_attempt, policy)
    assert 3 <= calls[0] < 20


def test_a_retry_after_over_the_cap_becomes_fatal_and_one_under_it_stays_a_429() -> None:
    policy = RetryPolicy(max_retry_after=60)
    with pytest.raises(RetryAfterTooLong) as stopped, retry_after_capped(policy):
        raise RateLimited(retry_after=3600)
    assert isinstance(stopped.value, FatalError)
    assert "wait 3600 s (Retry-After), over --max-retry-after 60 s" in str(stopped.value)
    with pytest.raises(RateLimited) as waited, retry_after_capped(policy):
        raise RateLimited(retry_after=30)
    assert waited.value.retry_after == 30
