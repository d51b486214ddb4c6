"""Waits that end on time on average, so a stream is held for the configured latency.

An event loop's timers fire late (uvloop by about 0.3 ms, asyncio's selector by about 0.9 ms)
and writing the answer takes a little more; left alone, a 50 ms latency holds a stream for
about 50.6 ms and the server's capacity falls short of limit / mean latency by over 1%. The
pacer learns that lateness from the answers it sends and starts each wait that much earlier.
"""

from __future__ import annotations

# How far a wait may be moved earlier: lateness beyond this is the server being slower than
# its latency (work, not timer slack), which an earlier start would only hide.
MAX_LEAD_S = 0.002
WEIGHT = 0.05  # how much of each answer's error moves the lead


class Pacer:
    """How much earlier than due each wait ends, learnt from how late answers went out."""

    def __init__(self) -> None:
        self.lead = 0.0

    def remaining(self, due: float, now: float) -> float:
        """Seconds to wait now for an answer due at `due` (both on the same clock)."""
        return due - self.lead - now

    def observe(self, late: float) -> None:
        """An answer due `late` seconds ago (negative: early) has just been sent after a paced
        wait. Integrating the error drives the mean lateness to zero."""
        self.lead = min(MAX_LEAD_S, max(0.0, self.lead + WEIGHT * late))
