"""What the engine tells the event log: one call per attempt, from the limiter's slot and
the attempt's answers or error. It also notes the limiter's level and run-wide pauses as
they change, so the engine needs no other hook."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Protocol

from batch.api_types import Usage
from batch.errors import ApiError
from batch.pricing import PriceTable
from jobs.base import JobOutcome, JobResult


class Sent(Protocol):
    """What the recorder reads of a request's limiter slot."""

    @property
    def sent_at(self) -> float: ...

    @property
    def in_flight(self) -> int: ...


class AttemptLog(Protocol):
    """Where attempts go: the run's `EventLog`, or on a cluster worker a buffer the driver
    writes into its own log (`batch.cluster.attempts`). Times are monotonic."""

    def attempt(
        self,
        start: float,
        end: float,
        *,
        status: int,
        error: str,
        jobs: int,
        limit: int,
        in_flight: int,
        usage: Usage | None = None,
        cost: float = 0.0,
    ) -> None: ...

    def pause(self, start: float, end: float) -> None: ...

    def limit_changed(self, at: float, limit: int) -> None: ...

    def close(self) -> None: ...


class Pacing(Protocol):
    """What the recorder reads of the limiter: its level and the run-wide pause left."""

    @property
    def limit(self) -> int: ...

    @property
    def pause_remaining(self) -> float: ...


class AttemptRecorder:
    """Records the attempts of one leg into `log`, reading the limiter's state after each."""

    def __init__(self, log: AttemptLog, limiter: Pacing, prices: PriceTable) -> None:
        self.log = log
        self.limiter = limiter
        self.prices = prices
        self._pause_end = 0.0
        log.limit_changed(time.monotonic(), limiter.limit)

    def answered(self, slot: Sent, jobs: int, outcomes: Iterable[JobOutcome]) -> None:
        """An attempt that the server answered (its rows may still fail on their own)."""
        usage = Usage()
        cost = 0.0
        for outcome in outcomes:
            if isinstance(outcome, JobResult):
                usage = usage + outcome.usage
                cost += self.prices.cost(outcome.model, outcome.usage)
        self._attempt(slot, jobs, status=200, error="", usage=usage, cost=cost)

    def failed(self, slot: Sent, jobs: int, exc: BaseException) -> None:
        """An attempt that ended in an error (or was cancelled while in flight)."""
        if isinstance(exc, ApiError):
            self._attempt(slot, jobs, status=exc.status or 0, error=type(exc).__name__)
        else:
            self._attempt(slot, jobs, status=0, error="Cancelled")

    def close(self) -> None:
        self.log.close()

    def _attempt(
        self,
        slot: Sent,
        jobs: int,
        *,
        status: int,
        error: str,
        usage: Usage | None = None,
        cost: float = 0.0,
    ) -> None:
        now = time.monotonic()
        self.log.attempt(
            slot.sent_at,
            now,
            status=status,
            error=error,
            jobs=jobs,
            limit=self.limiter.limit,
            in_flight=slot.in_flight,
            usage=usage,
            cost=cost,
        )
        remaining = self.limiter.pause_remaining
        if remaining > 0:
            end = now + remaining
            if end > self._pause_end + 1e-3:
                self.log.pause(max(now, self._pause_end), end)
                self._pause_end = end
