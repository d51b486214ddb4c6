"""The run's event log, `DIR/events.bin`: one fixed-width record per attempt, pause, limit
change and leg (one process run on the directory), written while the run goes, read back by
`gigabatch report`.

The file is an 8-byte magic followed by 40-byte little-endian records (`RECORD`):

    kind u8 | error u8 | status u16 | limit u16 | in_flight u16 | weight u16 | jobs u16
    | t f64 (unix s) | duration f32 (s) | cost f32 (RUB) | prompt u32 | completion u32
    | precached u32

    kind     fields used
    LEG      t: start; limit: --max-concurrency; cost: --max-cost (NaN: none);
             prompt: --max-tokens (0: none); completion: jobs done before; precached: jobs
    ATTEMPT  t: sent; duration: until answered or failed; status: HTTP status (0: none);
             error: index in ERROR_CLASSES (0: answered); jobs: jobs in the request;
             limit / in_flight: the limiter's level and requests in flight as it was sent;
             weight: how many attempts this record stands for (see sampling); tokens, cost
    PAUSE    t: start; duration: length of a run-wide pause (Retry-After or backoff)
    LIMIT    t: when; limit: the limiter's new level
    END      t: the leg ended cleanly (a leg without one was killed)

Records are buffered and appended with one write() at least every second or 64 KiB, with
no fsync: a kill -9 loses at most the last second of events, and a torn last record is
ignored on read and cut off when the next leg opens the file.

Bounded size: past `cap_bytes` (32 MiB, about 840,000 records) answered attempts are kept
1 in 2**k, k = 1 + (size - cap) // (cap / 16), and each kept record carries weight 2**k so
counts and tokens stay right; failures, pauses, limits and legs are always kept. Past twice
the cap only legs are written.
"""

from __future__ import annotations

import contextlib
import math
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from batch.api_types import Usage
from batch.errors import ReportError

EVENTS = "events.bin"
MAGIC = b"GBEVT01\n"
RECORD = struct.Struct("<BBHHHHHdffIII")
DEFAULT_CAP = 32 * 1024 * 1024

LEG, ATTEMPT, PAUSE, LIMIT, END = 1, 2, 3, 4, 5

# Append-only: a record stores the index, so reordering would misread old logs.
ERROR_CLASSES = (
    "",
    "RateLimited",
    "ServerError",
    "ConnectionFailed",
    "RequestTimedOut",
    "BadRequest",
    "NotFound",
    "PayloadTooLarge",
    "Unprocessable",
    "AuthenticationFailed",
    "PaymentRequired",
    "PermissionDenied",
    "Cancelled",
    "Other",
)
_ERROR_INDEX = {name: i for i, name in enumerate(ERROR_CLASSES)}
_U16 = 0xFFFF
_U32 = 0xFFFFFFFF
_FLUSH_BYTES = 64 * 1024
_FLUSH_SECONDS = 1.0
_NO_USAGE = Usage()


def error_index(name: str) -> int:
    """The record's code for an error class name (`Other` for names not in the table)."""
    return _ERROR_INDEX.get(name, _ERROR_INDEX["Other"])


def _clamp(value: int, bound: int) -> int:
    return min(max(value, 0), bound)


class EventLog:
    """Appends one leg's events to `DIR/events.bin`. Times given in `time.monotonic()`
    seconds (what the engine measures with) are stored as unix time, so legs line up."""

    def __init__(self, fd: int, size: int, cap_bytes: int) -> None:
        self._fd = fd
        self._size = size
        self._cap = cap_bytes
        self._buffer = bytearray()
        self._last_flush = time.monotonic()
        self._wall_offset = time.time() - time.monotonic()
        self._answered = 0
        self._last_limit = -1
        self.failure: str | None = None

    @classmethod
    def open(
        cls,
        out_dir: Path,
        *,
        max_concurrency: int,
        max_cost: float | None = None,
        max_tokens: int | None = None,
        done_before: int = 0,
        total_jobs: int = 0,
        restart: bool = False,
        cap_bytes: int = DEFAULT_CAP,
    ) -> EventLog:
        """Open (or start) the log of `out_dir` and record a new leg."""
        path = out_dir / EVENTS
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        size = os.fstat(fd).st_size
        if restart or size < len(MAGIC) or os.pread(fd, len(MAGIC), 0) != MAGIC:
            size = 0
        else:  # drop a record torn by a kill -9, so the next ones stay aligned
            size -= (size - len(MAGIC)) % RECORD.size
        os.ftruncate(fd, size)
        os.lseek(fd, size, os.SEEK_SET)
        if size == 0:
            os.write(fd, MAGIC)
            size = len(MAGIC)
        log = cls(fd, size, cap_bytes)
        log._add(
            LEG,
            t=time.time(),
            limit=max_concurrency,
            cost=math.nan if max_cost is None else max_cost,
            prompt=max_tokens or 0,
            completion=done_before,
            precached=total_jobs,
        )
        log.flush()
        return log

    @property
    def size(self) -> int:
        """Bytes in the file, buffered records included."""
        return self._size + len(self._buffer)

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
        """One attempt of one request, sent at `start` and over at `end` (monotonic)."""
        self.limit_changed(end, limit)
        code = error_index(error) if error else 0
        weight = 1
        size = self.size
        if size >= self._cap:
            if size >= 2 * self._cap:
                return
            if code == 0:
                weight = 2 ** min(15, 1 + (size - self._cap) // max(1, self._cap // 16))
                self._answered += 1
                if self._answered % weight:
                    return
        u = usage or _NO_USAGE
        self._add(
            ATTEMPT,
            t=start + self._wall_offset,
            duration=end - start,
            error=code,
            status=status,
            limit=limit,
            in_flight=in_flight,
            weight=weight,
            jobs=jobs,
            cost=cost,
            prompt=u.prompt_tokens,
            completion=u.completion_tokens,
            precached=u.precached_prompt_tokens,
        )

    def pause(self, start: float, end: float) -> None:
        """A run-wide pause from `start` to `end` (monotonic): nobody sends inside it."""
        if self.size < 2 * self._cap:
            self._add(PAUSE, t=start + self._wall_offset, duration=end - start, status=429)

    def limit_changed(self, at: float, limit: int) -> None:
        """The limiter's level at `at` (monotonic); recorded only when it changed."""
        if limit != self._last_limit and self.size < 2 * self._cap:
            self._last_limit = limit
            self._add(LIMIT, t=at + self._wall_offset, limit=limit)

    def close(self) -> None:
        """End the leg cleanly and write what is buffered."""
        if self._fd < 0:
            return
        self._add(END, t=time.time())
        self.flush()
        self._close_quietly()

    def flush(self) -> None:
        """Append the buffered records in one write (no fsync: the page cache survives a
        killed process, which is the crash this log is for)."""
        if self._buffer and self._fd >= 0:
            try:
                os.write(self._fd, self._buffer)
            except OSError as exc:  # a full disk must not stop the run: the log ends here
                self.failure = f"the event log stopped: {exc.strerror or exc}"
                self._close_quietly()
            else:
                self._size += len(self._buffer)
        self._buffer.clear()
        self._last_flush = time.monotonic()

    def _close_quietly(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = -1

    def _add(
        self,
        kind: int,
        *,
        t: float,
        duration: float = 0.0,
        error: int = 0,
        status: int = 0,
        limit: int = 0,
        in_flight: int = 0,
        weight: int = 1,
        jobs: int = 0,
        cost: float = 0.0,
        prompt: int = 0,
        completion: int = 0,
        precached: int = 0,
    ) -> None:
        fields = (kind, error, status, limit, in_flight, weight, jobs, t, duration, cost)
        try:
            self._buffer += RECORD.pack(*fields, prompt, completion, precached)
        except struct.error:  # a count out of its field's range is stored at the bound
            ints = [_clamp(v, _U16) for v in fields[2:7]]
            tokens = [_clamp(v, _U32) for v in (prompt, completion, precached)]
            self._buffer += RECORD.pack(kind, error, *ints, t, duration, cost, *tokens)
        if (
            len(self._buffer) >= _FLUSH_BYTES
            or time.monotonic() - self._last_flush >= _FLUSH_SECONDS
        ):
            self.flush()


@dataclass(frozen=True, slots=True)
class Event:
    """One record read back; field meanings depend on `kind` (see the module docstring)."""

    kind: int
    error: str
    status: int
    limit: int
    in_flight: int
    weight: int
    jobs: int
    t: float
    duration: float
    cost: float
    prompt: int
    completion: int
    precached: int

    @property
    def end(self) -> float:
        return self.t + self.duration


def read_events(out_dir: Path) -> list[Event]:
    """Every whole record of `out_dir`'s log, in file order (a torn last one is ignored).
    An absent log reads as no events."""
    path = out_dir / EVENTS
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    if not data.startswith(MAGIC):
        raise ReportError(f"{path}: not a gigabatch event log (it does not start with {MAGIC!r})")
    body = memoryview(data)[len(MAGIC) :]
    whole = len(body) - len(body) % RECORD.size
    events = []
    for rec in RECORD.iter_unpack(body[:whole]):
        error = ERROR_CLASSES[rec[1]] if rec[1] < len(ERROR_CLASSES) else "Other"
        events.append(Event(rec[0], error, *rec[2:]))
    return events
