"""The concurrency limit over a run's time, for the level it settled at."""

from __future__ import annotations

import bisect
from collections import deque


class LimitHistory:
    """(since, limit) changes, the most recent 20,000 of them."""

    def __init__(self, started: float, limit: int) -> None:
        self._changes: deque[tuple[float, int]] = deque(maxlen=20_000)
        self._changes.append((started, limit))

    def add(self, at: float, limit: int) -> None:
        self._changes.append((at, limit))

    def median(self, *, start: float, now: float) -> float:
        """The time-weighted median of the limit between `start` and `now`."""
        spans: dict[int, float] = {}
        changes = list(self._changes)
        for i, (t, value) in enumerate(changes):
            end = changes[i + 1][0] if i + 1 < len(changes) else now
            lo = max(t, start)
            if end > lo:
                spans[value] = spans.get(value, 0.0) + (end - lo)
        if not spans:
            return float(changes[-1][1])
        total = sum(spans.values())
        levels = sorted(spans)
        cumulative = []
        acc = 0.0
        for value in levels:
            acc += spans[value]
            cumulative.append(acc)
        return float(levels[bisect.bisect_left(cumulative, total / 2)])
