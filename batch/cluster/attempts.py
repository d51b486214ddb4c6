"""Event-log records across the cluster: a worker's `AttemptRecorder` writes into an
`AttemptBuffer`, each reply carries what it holds, and the driver's `AttemptReplay` writes
them into the run's own event log, so `gigabatch report` reads a Ray run as a local one.

Records travel in wall-clock time (each process's monotonic clock is its own); clocks of
different machines are taken to agree, as NTP keeps them to a few milliseconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from batch.api_types import Usage
from batch.recording import AttemptLog

ATTEMPT, PAUSE = "attempt", "pause"


def _wall_offset() -> float:
    """What turns this process's monotonic time into wall-clock time."""
    return time.time() - time.monotonic()


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One attempt, or one run-wide pause a worker saw (`event`), from `start` to `end`
    (wall clock)."""

    event: str
    start: float
    end: float
    status: int = 0
    error: str = ""
    jobs: int = 0
    limit: int = 0
    in_flight: int = 0
    usage: Usage | None = None
    cost: float = 0.0


class AttemptBuffer:
    """A worker's event log: records kept until the next reply takes them (`drain`)."""

    def __init__(self) -> None:
        self._records: list[LogRecord] = []
        self._offset = _wall_offset()

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
    ) -> None:
        offset = self._offset
        self._records.append(
            LogRecord(
                ATTEMPT, start + offset, end + offset, status, error, jobs, limit, in_flight,
                usage, cost,
            )
        )

    def pause(self, start: float, end: float) -> None:
        self._records.append(LogRecord(PAUSE, start + self._offset, end + self._offset))

    def limit_changed(self, at: float, limit: int) -> None:
        """The driver's log learns the level from each attempt's own `limit`."""

    def close(self) -> None:
        self._records.clear()

    def drain(self) -> list[LogRecord]:
        records, self._records = self._records, []
        return records


class AttemptReplay:
    """Writes the records workers send into the driver's `log`; a pause several workers
    saw is written once."""

    def __init__(self, log: AttemptLog) -> None:
        self._log = log
        self._pause_end = 0.0

    def write(self, records: list[LogRecord]) -> None:
        offset = _wall_offset()
        log = self._log
        for r in records:
            start, end = r.start - offset, r.end - offset
            if r.event == PAUSE:
                if end > self._pause_end + 1e-3:
                    log.pause(max(start, self._pause_end), end)
                    self._pause_end = end
                continue
            log.attempt(
                start,
                end,
                status=r.status,
                error=r.error,
                jobs=r.jobs,
                limit=r.limit,
                in_flight=r.in_flight,
                usage=r.usage,
                cost=r.cost,
            )
