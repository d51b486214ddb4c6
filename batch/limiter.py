"""How many requests may be in flight, and when any may be sent at all.

`AdaptiveLimiter` finds the server's concurrent-stream limit by itself (AIMD: additive
increase on success, multiplicative decrease on 429) and holds near the last level that
worked. A request holds a `Slot` (`async with limiter.slot()`), which waits out the run-wide
`Cooldown` (batch/cooldown.py) a 429 imposes and any `Outage` (batch/outage.py), and
records how the request ended.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from types import TracebackType

import anyio

from batch.cooldown import Cooldown
from batch.errors import RateLimited
from batch.limit_history import LimitHistory
from batch.outage import Outage
from batch.refusals import Refusals
from batch.stalls import Stalls

__all__ = ["AdaptiveLimiter", "Cooldown", "Outage", "Slot"]


# A probe waits at least this many times the run-wide pause the previous 429 caused, so
# probing costs at most 0.5% of the run; each probe that fails doubles the wait (up to
# the maximum), so a long run against a stable server spends far less. A server's limit
# is its account's plan and rarely changes: a drop shows at once (429s), a rise is found
# within the spacing (200 s with a 1 s Retry-After).
_PROBE_SPACING = 200.0
_MAX_PROBE_SPACING = 3200.0


class Slot:
    """One request's permit, as an async context manager (`async with limiter.slot() as
    slot:`): entering waits for a free slot and for any run-wide pause, and the request is
    sent at once; leaving records what the request said about capacity. A `RateLimited`
    leaving the block is a 429 (its `retry_after` pauses the run); no exception is a
    success; any other exception frees the slot and says nothing. A caller that handles a
    429 inside the block says so with `rate_limited()`.

    While held: `sent_at` (on the limiter's clock), the limit `epoch` it was taken under,
    `in_flight`, the requests in flight (itself included) as it went, and whether it is
    the one `probe` of an outage. `owner` (the request's tries share one) tells the outage
    one request failing again from several failing."""

    __slots__ = (
        "_limiter", "_refused", "_retry_after", "epoch", "in_flight", "owner", "probe",
        "sent_at", "stalled",
    )

    def __init__(self, limiter: AdaptiveLimiter, owner: object = None) -> None:
        self._limiter = limiter
        self.owner = owner if owner is not None else self
        self.probe = False
        self.stalled = False  # in flight so long that it no longer holds a slot
        self._refused = False
        self._retry_after: float | None = None
        self.sent_at = 0.0
        self.epoch = 0
        self.in_flight = 0

    def rate_limited(self, retry_after: float | None) -> None:
        """The request got a 429 that the block handled itself (`retry_after` in seconds)."""
        self._refused = True
        self._retry_after = retry_after

    async def __aenter__(self) -> Slot:
        await self._limiter._acquire(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        limiter = self._limiter
        limiter.outage.record(exc, self.owner, limiter.limit, probe=self.probe)
        if isinstance(exc, RateLimited):
            limiter._refused_by_server(self, exc.retry_after)
        elif self._refused:
            limiter._refused_by_server(self, self._retry_after)
        elif exc is None:
            limiter._succeeded(self)
        else:
            limiter._release(self)


class AdaptiveLimiter:
    """AIMD concurrency between 1 and `maximum`, shared by every worker of a run.

    - Increase: +1 after `limit` successes in a row (about one step per round trip), and
      only when the current limit was actually used, so an idle run does not inflate it.
      Until the first 429 the limit grows x`growth` per round trip instead (slow start), to
      find the level fast: with 1 s answers, doubling from 2 spends 4 s reaching 32 and
      x4 spends 2 s, while the one-off burst refused on overshooting costs no money.
    - Only a 429 for a request sent above the highest level known to work ("safe") starts
      an overload. One sent at or below it is transient (batch/refusals.py), unless such
      refusals keep coming among accepted answers: the server's limit went down.
    - Decrease on 429 (an "overload"): -1 for the first refused request and -1 for each
      other request sent into the same overload and refused too, so the limit lands on
      what the server accepted; but never below x`decrease` (after slow start: the level
      before its last increase) nor below the highest level that completed a full window cleanly
      ("safe"), because the server's limit is usually stable and dropping far below it
      wastes capacity. A 429 at or below "safe" means the server shrank (or a release
      raced): "safe" steps down by about 10%.
    - One overload per round trip: the first 429 starts a new epoch; 429s for requests sent
      before the previous decrease say nothing new.
    - After a decrease the limit holds for `hold` windows, then grows again by +1 per
      window up to just below the level that answered 429 ("bad"). Going to "bad" itself
      is a probe: it waits for `hold` windows (doubled by each failed probe, up to
      `max_hold`) and for 200x the pause the last 429 imposed (doubled by each failed
      probe too), so probing costs 0.5% of the run at most. A clean window at "bad" means
      the server grew: "bad" moves up and the probing waits start over.
    """

    def __init__(
        self,
        maximum: int,
        *,
        initial: int = 2,
        growth: int = 4,
        decrease: float = 0.7,
        hold: int = 4,
        max_hold: int = 256,
        cooldown: Cooldown | None = None,
        outage: Outage | None = None,
        clock: Callable[[], float] = time.monotonic,
        remembered: int | None = None,
    ) -> None:
        if maximum < 1:
            raise ValueError("maximum concurrency must be at least 1")
        self.maximum = maximum
        self.cooldown = cooldown if cooldown is not None else Cooldown(clock=clock)
        self.outage = outage if outage is not None else Outage(clock=clock)
        self._clock = clock
        self._decrease = decrease
        self._growth = max(2, growth)
        self._base_hold = hold
        self._max_hold = max_hold
        self._probe_windows = hold
        self._probe_spacing = _PROBE_SPACING
        self._probe_not_before = 0.0
        self._limit = max(1, min(initial, maximum))
        self._safe = 0  # highest level that completed a full window without a 429
        self._bad = maximum + 1  # lowest level that answered 429 since (maximum + 1: none)
        self._floor = 1  # how far the current overload may take the limit down
        self._overload_level = 0  # the limit when the current overload began
        self._overload_refused = 0  # 429s for requests sent into the current overload
        # Leaving slow start, the overload's earliest-sent refused request: when it arrived
        # the server was full with requests all sent before it and all still in flight, so no
        # more than the others in flight then fit (`_overload_bound`).
        self._bounding = False
        self._first_refused: tuple[float, int] = (float("inf"), 0)
        self._overload_bound = maximum
        self._in_flight = 0
        self._peak_since_change = 0
        self._successes = 0
        self._windows = 0  # full windows completed at the current level
        self._required_windows = 1
        self._epoch = 0
        self._slow_start = True
        self._refusals = Refusals()
        self._stalls = Stalls()
        self._changed = anyio.Event()
        self._waiters: deque[anyio.Event] = deque()
        self.rate_limited = 0
        self.started = clock()
        if remembered is not None:
            self._start_remembered(remembered)
        self._history = LimitHistory(self.started, self._limit)

    def _start_remembered(self, level: int) -> None:
        """Start at the level an earlier run settled at, as if a 429 had shown it: no slow
        start, and the level above is probed as usual (after `hold` windows and 200 s, the
        spacing after a 1 s pause). A server whose limit dropped refuses at once, and the
        limit comes down as after any 429."""
        self._limit = max(1, min(level, self.maximum))
        self._slow_start = False
        self._bad = self._limit + 1
        self._required_windows = self._base_hold
        self._probe_not_before = self._clock() + self._probe_spacing

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def found_limit(self) -> bool:
        """Whether a 429 has shown where the server's limit is (until then the limit only
        grew, and the server may take more than it has reached)."""
        return not self._slow_start

    @property
    def pause_remaining(self) -> float:
        """Seconds left of the run-wide pause a 429 imposed (0 when none)."""
        return self.cooldown.remaining

    def slot(self, owner: object = None) -> Slot:
        """A permit for one request: `async with limiter.slot() as slot:` (see `Slot`)."""
        return Slot(self, owner)

    async def _acquire(self, slot: Slot) -> None:
        """Wait for any outage to let this request probe or go, then as below."""
        slot.probe = await self.outage.admit()
        try:
            await self._take_when_free(slot)
        except BaseException:
            if slot.probe:
                self.outage.probe_done()
            raise

    async def _take_when_free(self, slot: Slot) -> None:
        """Wait for a free slot and for any run-wide pause to end, then take the slot.
        Nothing awaits between the last check and returning, so the caller sends at once.
        Waiters queue in order and each freed slot wakes one of them (not all: with many
        idle workers, waking every one on each answer costs real CPU)."""
        while True:
            await self.cooldown.wait()
            if self._in_flight < self._limit and not self._waiters:
                if self.cooldown.remaining > 0:
                    continue
                self._take(slot)
                return
            turn = anyio.Event()
            self._waiters.append(turn)
            if self._in_flight < self._limit:
                self._wake_waiters()  # a slot is free: the head of the queue may take it
            try:
                await turn.wait()
            except BaseException:
                if turn.is_set():
                    self._wake_waiters()  # hand the wake-up on rather than lose it
                else:
                    self._waiters.remove(turn)
                raise
            # Woken at the head of the queue: take the slot on the next pass (even though
            # others may be queued behind).
            await self.cooldown.wait()
            if self._in_flight < self._limit and self.cooldown.remaining <= 0:
                self._take(slot)
                self._wake_waiters()
                return

    def _take(self, slot: Slot) -> None:
        self._stalls.sent(slot)
        self._in_flight += 1
        if self._in_flight > self._peak_since_change:
            self._peak_since_change = self._in_flight
        slot.sent_at = self._clock()
        slot.epoch = self._epoch
        slot.in_flight = self._in_flight

    async def wait_changed(self) -> None:
        """Return at the next release or limit change."""
        changed = self._changed
        await changed.wait()

    def _wake_waiters(self) -> None:
        """Wake as many queued acquirers as there are free slots."""
        free = self._limit - self._in_flight
        while free > 0 and self._waiters:
            self._waiters.popleft().set()
            free -= 1

    def _wake(self) -> None:
        self._wake_waiters()
        self._changed.set()
        self._changed = anyio.Event()

    def _release(self, slot: Slot, *, answered: bool = False) -> None:
        self._stalls.ended(slot, self._clock(), answered=answered)
        if not slot.stalled:
            self._in_flight -= 1
        self._wake()

    async def watch_stalls(self, every: float = 0.5) -> None:
        """Free the slots of hung or trickling requests (batch/stalls.py), until cancelled."""
        while True:
            await anyio.sleep(every)
            stalled = self._stalls.newly_stalled(self._clock())
            if stalled:
                self._in_flight -= stalled
                self._wake()

    def _succeeded(self, slot: Slot) -> None:
        self._release(slot, answered=True)
        self.cooldown.reset()
        self._refusals.accepted()
        self._successes += 1
        if self._successes < self._limit:
            return
        self._successes = 0
        if self._peak_since_change < self._limit:
            return  # the limit was not the bottleneck: no evidence it could go higher
        level = self._limit
        self._windows += 1
        self._safe = max(self._safe, level)
        if level >= self._bad:  # a clean window where a 429 came before: the server grew
            self._bad = level + 1
            self._probe_afresh()
        if level >= self.maximum or self._windows < self._required_windows:
            return
        if self._slow_start:
            self._set_limit(level * self._growth)
        elif level + 1 < self._bad:
            self._set_limit(level + 1)
        elif self._windows >= self._probe_windows and self._clock() >= self._probe_not_before:
            self._set_limit(level + 1)  # probe the level that last answered 429

    def _refused_by_server(self, slot: Slot, retry_after: float | None) -> None:
        """The request got 429: pause the run as the server asked, and maybe decrease."""
        self.rate_limited += 1
        if retry_after is not None:
            self.cooldown.retry_after(retry_after)
        else:
            self.cooldown.backoff(slot.sent_at)
        self._release(slot)
        if slot.epoch == self._epoch - 1:
            self._refusals.refused()
            self._refused_again(slot)
        elif slot.epoch != self._epoch:
            self._refusals.refused()  # sent before an earlier decrease: nothing new
        elif slot.in_flight > self._safe:
            self._refusals.refused()
            self._overload(slot)
        elif self._refusals.transient(self._limit):
            self._overload(slot)  # transient-looking 429s that keep coming: a shrink

    def _refused_again(self, slot: Slot) -> None:
        """Another request sent into the same overload was refused: one fewer fits."""
        self._overload_refused += 1
        self._bound_by(slot)
        target = max(
            self._floor,
            min(self._overload_level - self._overload_refused, self._overload_bound),
        )
        if target < self._limit:
            self._set_limit(target)
            self._bad = self._limit + 1
            self._required_windows = self._base_hold
        if (
            self._overload_level - self._overload_refused < self._floor
            or self._refusals.in_a_row > self._overload_refused
        ):
            # Refusals beyond the floor, or of requests sent at a level known to work, are
            # not about our level (a storm, a shrink): regrowth up to where the overload
            # began need not wait for probes.
            self._bad = self._overload_level

    def _overload(self, slot: Slot) -> None:
        """The first 429 of a new overload: decrease, and space the next probe."""
        # The level the server refused is the concurrency it was really offered: right after
        # a slow-start increase the first 429 comes long before the new limit is filled, and
        # counting down from the limit would land above the server's limit by the slots never
        # used (and cost a second pause to shed them).
        level = min(self._limit, max(1, self._peak_since_change))
        if level <= self._safe:
            # The server's limit went down (or a response raced its stream's release):
            # step the known-good level down gently rather than forgetting it.
            self._safe = max(0, min(level - 1, int(level * 0.9)))
            self._probe_afresh()
        elif level >= self._bad:
            # A probe of a level that failed before failed again: probe less often.
            self._probe_windows = min(self._max_hold, self._probe_windows * 2)
            self._probe_spacing = min(_MAX_PROBE_SPACING, self._probe_spacing * 2)
        # Leaving slow start, the increase's burst meets answers freeing slots, which let a
        # few late requests in: counting refusals alone can leave the limit over the
        # server's, costing a second pause. Later overloads are a probe's single step.
        self._bounding = self._slow_start
        self._first_refused = (float("inf"), 0)
        self._overload_bound = self.maximum
        self._bound_by(slot)
        # The overload may take the limit down by one per refused request, but not below
        # the last level that worked when leaving slow start (the level before the increase),
        # nor below x`decrease` otherwise.
        if self._slow_start:
            self._floor = max(1, self._safe)
        else:
            self._floor = max(1, self._safe, int(level * self._decrease))
        self._slow_start = False
        self._epoch += 1
        self._overload_level = level
        self._overload_refused = 1
        self._set_limit(max(self._floor, min(level - 1, self._overload_bound)))
        self._bad = self._limit + 1
        self._required_windows = self._base_hold
        # Each probe costs the whole run the pause it provokes: space probes so that this
        # stays a small fraction of the run's time.
        self._probe_not_before = self._clock() + self._probe_spacing * self.cooldown.remaining

    def _probe_afresh(self) -> None:
        """The server's limit changed: probing waits start over from their base."""
        self._probe_windows = self._base_hold
        self._probe_spacing = _PROBE_SPACING

    def _bound_by(self, refused: Slot) -> None:
        """Leaving slow start: cap the limit by what was in flight before the earliest-sent
        request the server refused."""
        if self._bounding:
            key = (refused.sent_at, refused.in_flight)
            if key < self._first_refused:
                self._first_refused = key
                self._overload_bound = refused.in_flight - 1

    def _set_limit(self, value: int) -> None:
        self._limit = max(1, min(self.maximum, value))
        self._successes = 0
        self._windows = 0
        self._required_windows = 1
        self._peak_since_change = self._in_flight
        self._history.add(self._clock(), self._limit)
        self._wake()

    def settled(self, *, tail: float = 0.5) -> float:
        """The concurrency the run settled at: the time-weighted median of the limit over
        the last `tail` fraction of the run so far."""
        now = self._clock()
        return self._history.median(start=now - (now - self.started) * tail, now=now)
