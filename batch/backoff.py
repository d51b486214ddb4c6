"""Capped exponential backoff with jitter: the one formula behind every wait between tries
(a request's retries, a token refresh, the run-wide pause after a 429 without Retry-After).
"""

from __future__ import annotations

import random
from collections.abc import Callable

# 2**64 times any base is far past every cap; higher steps only risk a float overflow.
_MAX_STEP = 64


def backoff_delay(
    step: int,
    *,
    base: float,
    cap: float,
    spread: float | None = None,
    rng: Callable[[], float] = random.random,
) -> float:
    """The wait after `step` earlier waits (0 for the first): `base` doubled per step, at
    most `cap`. Jitter is "equal" (between half and all of the delay, so the wait still
    relieves the server) unless `spread` is given: then 0..`spread` seconds are added."""
    delay = min(cap, base * 2.0 ** min(max(step, 0), _MAX_STEP))
    if spread is not None:
        return delay + rng() * spread
    return delay / 2 + rng() * delay / 2
