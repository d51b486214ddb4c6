"""The run-wide pause a 429 imposes on every worker (`AdaptiveLimiter` waits it out before
handing out a slot, and the transport checks an announced window once more right before a
request's bytes leave)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import anyio

from batch.backoff import backoff_delay
from batch.errors import SendHeld


class Cooldown:
    """A run-wide pause: while it lasts no worker sends anything.

    A 429 with `Retry-After` pauses until that instant (an announced window); a 429
    without one pauses for a shared exponential backoff with jitter that grows with
    consecutive 429s and resets on the first success. 429s answering requests sent before
    the current pause began do not grow the backoff again: a burst of rejections from one
    overload is one event. The real API sends 429s without `Retry-After` as a matter of
    course, so the backoff starts small (10-20 ms) and stays short (at most 2 s): a storm
    costs at most that much beyond its end.

    `announce` is told, in one line, of every pause of a second or more as it begins.
    """

    def __init__(
        self,
        *,
        base: float = 0.02,
        cap: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        announce: Callable[[str], None] | None = None,
    ) -> None:
        self.base = base
        self.cap = cap
        self.announce = announce
        self._clock = clock
        self._rng = rng
        self._until = 0.0
        self._announced_until = 0.0
        self._level = 0
        self._backoff_started = float("-inf")

    @property
    def remaining(self) -> float:
        """Seconds left in the current pause (0 when none)."""
        return max(0.0, self._until - self._clock())

    @property
    def announced_remaining(self) -> float:
        """Seconds left in a window the server announced with `Retry-After` (0 when none)."""
        return max(0.0, self._announced_until - self._clock())

    def check_send(self) -> None:
        """Raise SendHeld inside a window the server announced (the transport's last check
        before a request's bytes leave: it may have passed the limiter just before)."""
        remaining = self.announced_remaining
        if remaining > 0:
            raise SendHeld(f"held back: the server asked to wait {remaining:.2f} s more")

    def pause_until(self, deadline: float, why: str = "") -> None:
        """Pause every worker until `deadline` (on this cooldown's clock); never shortens."""
        now = self._clock()
        if self.announce is not None and why and deadline - max(now, self._until) >= 1.0:
            self.announce(f"paused {deadline - now:.1f} s: {why}")
        self._until = max(self._until, deadline)

    def retry_after(self, seconds: float) -> None:
        """The server said when to come back."""
        deadline = self._clock() + seconds
        self._announced_until = max(self._announced_until, deadline)
        self.pause_until(deadline, "the server's Retry-After (every worker waits)")

    def backoff(self, sent_at: float) -> float:
        """A 429 without `Retry-After` for a request sent at `sent_at`: pause with jittered
        exponential backoff; returns the pause's remaining seconds."""
        now = self._clock()
        if sent_at >= self._backoff_started:
            delay = backoff_delay(self._level, base=self.base, cap=self.cap, rng=self._rng)
            self._level = min(self._level + 1, 30)
            self._backoff_started = now
            self.pause_until(now + delay, "429s without Retry-After (shared backoff)")
        return self.remaining

    def reset(self) -> None:
        """A request succeeded: the next 429 without `Retry-After` starts from the base."""
        self._level = 0

    async def wait(self) -> None:
        """Return once no pause is in force (the pause may be extended while waiting)."""
        while True:
            delta = self._until - self._clock()
            if delta <= 0:
                return
            await anyio.sleep(delta)
