"""Which 429s say something about the concurrency level, and which are noise.

The real API may send 429 without `Retry-After` at any time, or a 429 body inside a 200:
one such refusal of a request sent at a level known to work is transient (the run backs
off for a moment and goes on at the same level). Only a pattern says the server's stream
limit went down: several refusals among the last answers, with answers accepted between
them. A run of refusals longer than the level itself (every request of a burst refused) is
a storm: it pauses the run but says nothing about the level either.
"""

from __future__ import annotations

from collections import deque

# The answers a shrink is judged over, and the refusals among them that show one.
WINDOW = 64
SHRINK_AT = 5


class Refusals:
    """The recent answers of requests sent at or below the known-good level."""

    def __init__(self) -> None:
        self._recent: deque[bool] = deque(maxlen=WINDOW)  # True: refused
        self._refused = 0
        self._accepted_since_refusal = 0
        self.in_a_row = 0  # 429s since the last accepted answer (any level)

    def accepted(self) -> None:
        self.in_a_row = 0
        self._push(False)
        if self._refused:
            self._accepted_since_refusal += 1

    def refused(self) -> None:
        """A 429 for a request sent above the known-good level (counted in `in_a_row`)."""
        self.in_a_row += 1

    def transient(self, level: int) -> bool:
        """A 429 for a request sent at or below the known-good `level`. True when the
        recent answers show the server's limit went down (the window then starts over)."""
        self.in_a_row += 1
        if self.in_a_row >= level:  # everything refused: a storm, not a level
            self._clear()
            return False
        self._push(True)
        if self._refused >= SHRINK_AT and self._accepted_since_refusal > 0:
            self._clear()
            return True
        return False

    def _push(self, refused: bool) -> None:
        if len(self._recent) == WINDOW and self._recent[0]:
            self._refused -= 1
        self._recent.append(refused)
        self._refused += refused

    def _clear(self) -> None:
        self._recent.clear()
        self._refused = 0
        self._accepted_since_refusal = 0
