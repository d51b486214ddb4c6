"""Outages: when the API is away, the run pauses instead of failing rows.

Connection failures, timeouts and 5xx from several requests in a row, with no answer
between them, mean the API (or its OAuth endpoint) is away, not that those requests are
bad. The run then pauses: one request at a time probes it, spaced by a growing backoff,
and the first answer of any kind ends the outage. Errors during an outage do not count
against a request's attempts. An outage longer than `max_outage` stops the run (exit 1;
a resume continues), so cron can try again later.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import anyio

from batch.backoff import backoff_delay
from batch.errors import (
    ApiError,
    ConnectionFailed,
    RequestTimedOut,
    SendHeld,
    ServerError,
    ServiceUnreachable,
    TokenUnavailable,
)

# What an unreachable or failing service looks like (anything else is an answer).
OUTAGE_ERRORS = (ConnectionFailed, RequestTimedOut, ServerError, TokenUnavailable)
DEFAULT_MAX_OUTAGE = 900.0


def clock_time(wall: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall))


class Outage:
    """Whether the API is away, and who may probe it.

    - `failed(exc, owner, level)`: a request ended in one of OUTAGE_ERRORS. `threshold`
      failures in a row (at least half the concurrency `level`), from at least two
      different requests, begin an outage: one request's own repeated failures are about
      that request.
    - `answered()`: the server answered something; an outage ends.
    - `admit()`: wait until a request may be sent (at once, outside an outage).
    """

    def __init__(
        self,
        *,
        max_outage: float = DEFAULT_MAX_OUTAGE,
        threshold: int = 3,
        probe_base: float = 0.5,
        probe_cap: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        announce: Callable[[str], None] | None = None,
    ) -> None:
        self.max_outage = max_outage
        self.threshold = threshold
        self.probe_base = probe_base
        self.probe_cap = probe_cap
        self.announce = announce
        self._clock = clock
        self._wall = wall
        self.active = False
        self.began = 0.0
        self._began_wall = 0.0
        self._in_a_row = 0
        self._owners: set[object] = set()
        self._probing = False
        self._failed_probes = 0
        self._next_probe = 0.0
        self._changed = anyio.Event()
        self.outages = 0
        self.paused_s = 0.0

    @property
    def began_wall(self) -> float:
        """When the current outage began (wall clock; 0 outside one)."""
        return self._began_wall if self.active else 0.0

    @property
    def elapsed(self) -> float:
        """Seconds the current outage has lasted (0 outside one)."""
        return self._clock() - self.began if self.active else 0.0

    @property
    def expired(self) -> bool:
        """The current outage has lasted longer than `max_outage`."""
        return self.active and self.elapsed >= self.max_outage

    def excuses(self, exc: BaseException) -> bool:
        """Whether `exc` is the outage's, not the request's (it then does not count)."""
        return self.active and isinstance(exc, OUTAGE_ERRORS)

    def failed(self, exc: BaseException, owner: object, level: int, *, probe: bool) -> None:
        if not isinstance(exc, OUTAGE_ERRORS):
            return
        if self.active:
            if probe:
                self._failed_probes += 1
                delay = backoff_delay(
                    self._failed_probes - 1, base=self.probe_base, cap=self.probe_cap
                )
                self._next_probe = self._clock() + delay
            return
        self._in_a_row += 1
        self._owners.add(owner)  # hashable: by identity, or a cluster's (worker, request)
        if self._in_a_row >= max(self.threshold, level // 2) and len(self._owners) >= 2:
            self._begin(exc)

    def record(
        self, exc: BaseException | None, owner: object, level: int, *, probe: bool
    ) -> None:
        """How a request ended (None: answered): an answer of any kind, even an error
        status, shows the server is there; a request held back or cancelled says nothing."""
        if exc is None or (
            isinstance(exc, ApiError) and not isinstance(exc, (*OUTAGE_ERRORS, SendHeld))
        ):
            self.answered()
        else:
            self.failed(exc, owner, level, probe=probe)
        if probe:
            self.probe_done()

    def answered(self) -> None:
        self._in_a_row = 0
        self._owners.clear()
        if self.active:
            self._end()

    def probe_done(self) -> None:
        self._probing = False
        self._wake()

    async def admit(self) -> bool:
        """Wait until a request may go: at once outside an outage; during one, when no
        other probe is out and the probe backoff has passed. True for the probe."""
        while self.active:
            wait = self._next_probe - self._clock()
            if not self._probing and wait <= 0:
                self._probing = True
                return True
            changed = self._changed
            with anyio.move_on_after(math.inf if self._probing else wait):
                await changed.wait()
        return False

    def _begin(self, exc: BaseException) -> None:
        self.active = True
        self.outages += 1
        self.began = self._clock()
        self._began_wall = self._wall()
        self._failed_probes = 0
        self._next_probe = self.began + self.probe_base
        if self.announce is not None:
            self.announce(
                f"API unreachable since {clock_time(self._began_wall)} ({exc}); "
                "paused, probing with one request"
            )

    def _end(self) -> None:
        lasted = self._clock() - self.began
        self.active = False
        self.paused_s += lasted
        if self.announce is not None:
            self.announce(
                f"API back at {clock_time(self._wall())} after {lasted:.1f} s "
                f"(away since {clock_time(self._began_wall)}); resuming"
            )
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def give_up(self) -> ServiceUnreachable:
        """The error that stops a run whose outage lasted past `max_outage`."""
        return ServiceUnreachable(
            f"the API has been unreachable for {self.elapsed:.0f} s (since "
            f"{clock_time(self._began_wall)}; --max-outage {self.max_outage:g} s): "
            "answered jobs are committed; run the same command again to resume"
        )
