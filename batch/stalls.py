"""Requests that stopped counting: one in flight ten times longer than answers take is
hung or trickling. It keeps its worker and its connection until its deadline, but no
longer holds one of the limiter's slots, so a few hung requests cannot stall a whole run
for a deadline (the run has HEADROOM workers and connections per slot for them)."""

from __future__ import annotations

from typing import Protocol

# A request is stalled after this many typical answer times, and never before MIN_STALL_S.
STALL_FACTOR = 10.0
MIN_STALL_S = 2.0
# Workers and connections per limiter slot: a stalled request keeps its worker and its
# connection until its deadline, so a run has more of both than the limiter lets count.
HEADROOM = 4
# Weight of each new answer time in the running typical one.
_ALPHA = 0.05


class InFlight(Protocol):
    sent_at: float
    stalled: bool


class Stalls:
    """The requests in flight, and the typical time an answer takes."""

    def __init__(self) -> None:
        self._in_flight: set[InFlight] = set()
        self.typical = 0.0  # seconds; 0 until the first answer

    def sent(self, request: InFlight) -> None:
        self._in_flight.add(request)

    def ended(self, request: InFlight, now: float, *, answered: bool) -> None:
        self._in_flight.discard(request)
        if answered and not request.stalled:
            took = now - request.sent_at
            self.typical = took if self.typical == 0 else self.typical + _ALPHA * (
                took - self.typical
            )

    def newly_stalled(self, now: float) -> int:
        """Mark the requests in flight past the stall time; how many were marked now."""
        if self.typical == 0:
            return 0
        after = max(MIN_STALL_S, STALL_FACTOR * self.typical)
        count = 0
        for request in self._in_flight:
            if not request.stalled and now - request.sent_at > after:
                request.stalled = True
                count += 1
        return count
