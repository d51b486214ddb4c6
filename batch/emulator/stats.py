"""What the emulator saw: requests by path and status, peak concurrency, 429s, OAuth calls
(/api/v2/oauth and /api/v1/token), tokens served, faults, the configured and the real mean
time per answer, per-request arrival times and the Retry-After windows it announced.
Arrivals are kept in compact bounded arrays so a long benchmark does not eat memory."""

from __future__ import annotations

import collections
from array import array
from typing import Any

# Arrivals beyond this are counted in `arrivals_dropped` instead of stored (~22 MB at most).
MAX_ARRIVALS = 2_000_000
MAX_WINDOWS = 100_000


class Stats:
    """Counters of one emulator; `reset()` starts them afresh."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests: dict[str, collections.Counter[int]] = {}
        self.peak_concurrency = 0
        self.rate_limited = 0
        self.oauth_calls = 0
        self.tokens = {"prompt": 0, "completion": 0, "precached": 0, "embedding": 0}
        self.faults: collections.Counter[str] = collections.Counter()
        self.latency_total_s = 0.0
        self.latency_count = 0
        self.service_total_s = 0.0
        self.service_count = 0
        self._paths: list[str] = []
        self._path_ids: dict[str, int] = {}
        self._arrival_t = array("d")
        self._arrival_path = array("H")
        self._arrival_status = array("H")
        self.arrivals_dropped = 0
        self.windows: list[tuple[float, float]] = []

    def record(self, path: str, status: int, arrived: float) -> None:
        """One answered request (status 0: the connection was cut before a full answer)."""
        counter = self.requests.get(path)
        if counter is None:
            counter = self.requests[path] = collections.Counter()
        counter[status] += 1
        if status == 429:
            self.rate_limited += 1
        if len(self._arrival_t) >= MAX_ARRIVALS:
            self.arrivals_dropped += 1
            return
        path_id = self._path_ids.get(path)
        if path_id is None:
            path_id = self._path_ids[path] = len(self._paths)
            self._paths.append(path)
        self._arrival_t.append(arrived)
        self._arrival_path.append(path_id)
        self._arrival_status.append(status)

    def window(self, start: float, end: float) -> None:
        """A Retry-After announced at `start` for `end`; repeats of the same end (a storm
        answering many requests, rounded to the millisecond) are stored once."""
        if self.windows and abs(self.windows[-1][1] - end) < 0.002:
            return
        if len(self.windows) < MAX_WINDOWS:
            self.windows.append((start, end))

    def concurrency(self, in_flight: int) -> None:
        if in_flight > self.peak_concurrency:
            self.peak_concurrency = in_flight

    def latency(self, seconds: float) -> None:
        self.latency_total_s += seconds
        self.latency_count += 1

    def service(self, seconds: float) -> None:
        """An answered (200) API request took `seconds` from arrival to its last byte handed
        to the server: the time its stream slot was really held, sleep overshoot and
        (de)serialising included, unlike the configured `latency`."""
        self.service_total_s += seconds
        self.service_count += 1

    def snapshot(self, *, arrivals: bool = True) -> dict[str, Any]:
        """The JSON document of `GET /_emulator/stats`."""
        data: dict[str, Any] = {
            "requests": {
                path: {str(status): n for status, n in sorted(counter.items())}
                for path, counter in sorted(self.requests.items())
            },
            "peak_concurrency": self.peak_concurrency,
            "rate_limited": self.rate_limited,
            "oauth_calls": self.oauth_calls,
            "tokens": dict(self.tokens),
            "faults": dict(self.faults),
            "mean_latency_s": (
                self.latency_total_s / self.latency_count if self.latency_count else None
            ),
            "mean_service_s": (
                self.service_total_s / self.service_count if self.service_count else None
            ),
            "retry_after_windows": [{"start": s, "end": e} for s, e in self.windows],
            "arrivals_count": len(self._arrival_t) + self.arrivals_dropped,
            "arrivals_dropped": self.arrivals_dropped,
        }
        if arrivals:
            paths = self._paths
            data["arrivals"] = [
                {"t": t, "path": paths[p], "status": s}
                for t, p, s in zip(
                    self._arrival_t, self._arrival_path, self._arrival_status, strict=True
                )
            ]
        return data
