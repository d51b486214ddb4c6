"""The cluster's one account, in one place: the stream-limit discovery (the engine's own
`AdaptiveLimiter`), its run-wide pause and the OAuth token every worker sends.

Workers never ask per request. They lease slots k at a time and report how each ended in
batches (`Report`), so the coordinator's cost is one call per lease and per report batch.
`Coordinator` is a plain class: the driver makes it a named Ray actor, tests use it as is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import anyio

from batch.errors import ApiError, ConnectionFailed, RateLimited
from batch.limiter import AdaptiveLimiter, Slot
from batch.outage import DEFAULT_MAX_OUTAGE, Outage

# How a leased slot's request ended: answered, refused with 429, unanswered because the API
# looks away (a connection failure, a timeout, a 5xx), answered with another error, or none
# of these (cancelled, or a slot given back unused).
OK, REFUSED, AWAY, ERROR, UNANSWERED = "ok", "429", "away", "error", "none"


@dataclass(frozen=True, slots=True)
class Report:
    """How the request sent under leased slot `slot` ended (`retry_after` for a 429);
    `request` tells one request's tries (on one worker) from another's."""

    slot: int
    outcome: str
    retry_after: float | None = None
    request: int = 0


@dataclass(frozen=True, slots=True)
class Lease:
    """Slots granted to one worker, the limit they were taken under, and the run-wide pause
    (wall-clock seconds, `time.time()`; 0 when none) workers must wait out before sending."""

    slots: tuple[int, ...]
    limit: int
    pause_until: float
    outage_since: float = 0.0  # when the outage in force began (wall clock; 0: none)


@dataclass(frozen=True, slots=True)
class Grant:
    """The Authorization header workers send (None under mTLS only), its generation on the
    coordinator, or why no token can be had."""

    header: str | None
    generation: int
    failure: str | None = None


@dataclass(frozen=True, slots=True)
class CoordinatorReport:
    """What the coordinator did, for the summary and the benchmark."""

    settled: float
    found_limit: bool
    limit: int
    rate_limited: int
    leases: int
    reports: int
    slots: int
    outages: int
    outage_seconds: float
    cpu_seconds: float  # the actor's whole process, Ray's own threads included
    loop_cpu_seconds: float  # its event loop: the coordinator's code and Ray's glue to it

    @property
    def cpu_us_per_request(self) -> float:
        return 1e6 * self.cpu_seconds / self.slots if self.slots else 0.0

    @property
    def loop_cpu_us_per_request(self) -> float:
        return 1e6 * self.loop_cpu_seconds / self.slots if self.slots else 0.0


class _Unanswered(Exception):
    """A leased slot came back without an answer that says anything about capacity."""


class Coordinator:
    """Slots, the pause, outages and the token for every worker of one run.

    Outages are decided here, as a local run's limiter does (`batch.outage`): workers
    report connection failures, timeouts and 5xx at once, the coordinator's `Outage` sees
    them from every worker, and while it lasts it leases one probe slot at a time."""

    def __init__(
        self, maximum: int, initial: int = 2, max_outage: float = DEFAULT_MAX_OUTAGE
    ) -> None:
        self._maximum = maximum
        self._initial = initial
        self._max_outage = max_outage
        self._limiter: AdaptiveLimiter | None = None
        self._open: dict[int, tuple[str, Slot]] = {}
        self._next_slot = 0
        self._leases = 0
        self._reports = 0
        self._slots = 0
        self._cpu_started = time.process_time()
        self._loop_cpu_started = 0.0
        self._pause_until = 0.0
        self._pause_moved: anyio.Event | None = None
        self._outage_moved: anyio.Event | None = None
        self._grant = Grant(None, 0)
        self._token_moved: anyio.Event | None = None
        self._wanted: anyio.Event | None = None

    # anyio primitives need a running loop, which a Ray actor's __init__ does not have.
    @property
    def limiter(self) -> AdaptiveLimiter:
        if self._limiter is None:
            self._limiter = AdaptiveLimiter(
                self._maximum,
                initial=self._initial,
                outage=Outage(max_outage=self._max_outage),
            )
            self._loop_cpu_started = time.thread_time()
        return self._limiter

    async def lease(self, owner: str, want: int, reports: list[Report]) -> Lease:
        """Settle `reports`, then grant 1 to `want` slots: waits for the first (and for any
        pause), and adds the others only if they are free at once."""
        self._leases += 1
        await self._settle(reports)
        slots = [await self._take(owner)]
        limiter = self.limiter
        while len(slots) < want and limiter.in_flight < limiter.limit:
            with anyio.move_on_after(0) as scope:
                taken = await self._take(owner)
            if scope.cancelled_caught:
                break
            slots.append(taken)
        self._slots += len(slots)
        return Lease(tuple(slots), limiter.limit, self._pause_until, self.outage_since)

    async def report(self, owner: str, reports: list[Report]) -> float:
        """How leased slots ended (the worker sends them in batches); returns when the
        outage in force began (0: none)."""
        self._reports += 1
        await self._settle(reports)
        return self.outage_since

    @property
    def outage_since(self) -> float:
        """When the outage in force began (wall clock; 0: none)."""
        return self.limiter.outage.began_wall

    async def next_outage(self, known: float) -> float:
        """The driver's long poll: wait until an outage begins or ends (`outage_since`
        differs from `known`); return the new `outage_since`."""
        while self.outage_since == known:
            await self._outage_event().wait()
        return self.outage_since

    def _outage_event(self) -> anyio.Event:
        if self._outage_moved is None:
            self._outage_moved = anyio.Event()
        return self._outage_moved

    async def forget(self, owner_prefix: str, keep: str = "") -> int:
        """Free the slots of a worker that died (every owner starting with `owner_prefix`
        except `keep`, the incarnation that asks); returns how many."""
        lost = [
            slot_id
            for slot_id, (owner, _) in self._open.items()
            if owner.startswith(owner_prefix) and owner != keep
        ]
        await self._settle([Report(slot_id, UNANSWERED) for slot_id in lost])
        return len(lost)

    async def next_pause(self, known: float) -> float:
        """Wait until the run-wide pause ends later than `known` (wall clock); return it."""
        while self._pause_until <= known:
            await self._pause_event().wait()
        return self._pause_until

    async def _take(self, owner: str) -> int:
        slot = self.limiter.slot()
        await slot.__aenter__()
        # A leased slot is sent a little later than it is taken, in no set order with the
        # others: what was in flight when it was taken bounds nothing, so the limiter's
        # exit from slow start counts refusals only.
        slot.in_flight = self.limiter.limit
        self._next_slot += 1
        self._open[self._next_slot] = (owner, slot)
        return self._next_slot

    async def _settle(self, reports: list[Report]) -> None:
        limiter = self.limiter
        before = limiter.cooldown.remaining
        outage_before = self.outage_since
        for report in reports:
            entry = self._open.pop(report.slot, None)
            if entry is None:
                continue  # already forgotten (its worker was taken for dead)
            owner, slot = entry
            slot.owner = (owner, report.request)
            if report.outcome == OK:
                await slot.__aexit__(None, None, None)
            elif report.outcome == REFUSED:
                refused = RateLimited(retry_after=report.retry_after)
                await slot.__aexit__(RateLimited, refused, None)
            elif report.outcome == AWAY:
                away = ConnectionFailed("a worker's request found the API away")
                await slot.__aexit__(ConnectionFailed, away, None)
            elif report.outcome == ERROR:  # the server is there: any outage ends
                answered = ApiError("a worker's request was answered with an error")
                await slot.__aexit__(ApiError, answered, None)
            else:
                await slot.__aexit__(_Unanswered, _Unanswered(), None)
        if self.outage_since != outage_before:
            self._outage_event().set()
            self._outage_moved = None
        remaining = limiter.cooldown.remaining
        if remaining > before:
            self._pause_until = max(self._pause_until, time.time() + remaining)
            self._pause_event().set()
            self._pause_moved = None

    def _pause_event(self) -> anyio.Event:
        if self._pause_moved is None:
            self._pause_moved = anyio.Event()
        return self._pause_moved

    # The token: the driver (which alone holds the credentials) publishes it; workers read
    # it, and a worker whose request got 401 asks for a new one, once for the cluster.

    async def token(self, newer_than: int = 0) -> Grant:
        """The current token once its generation is above `newer_than` (or a failure)."""
        while self._grant.generation <= newer_than and self._grant.failure is None:
            await self._token_event().wait()
        return self._grant

    async def token_rejected(self, generation: int) -> Grant:
        """A request with `generation`'s token got 401: wait for the next one."""
        if generation == self._grant.generation:
            self._wanted_event().set()
        return await self.token(generation)

    async def publish_token(self, header: str | None, failure: str | None = None) -> int:
        self._grant = Grant(header, self._grant.generation + 1, failure)
        self._token_event().set()
        self._token_moved = None
        self._wanted = None
        return self._grant.generation

    async def token_wanted(self, patience: float) -> bool:
        """The driver's long poll: True when a worker asked for a new token, False when
        none did within `patience` seconds."""
        with anyio.move_on_after(patience):
            await self._wanted_event().wait()
            return True
        return False

    def _token_event(self) -> anyio.Event:
        if self._token_moved is None:
            self._token_moved = anyio.Event()
        return self._token_moved

    def _wanted_event(self) -> anyio.Event:
        if self._wanted is None:
            self._wanted = anyio.Event()
        return self._wanted

    async def summary(self) -> CoordinatorReport:
        limiter = self.limiter
        return CoordinatorReport(
            settled=limiter.settled(),
            found_limit=limiter.found_limit,
            limit=limiter.limit,
            rate_limited=limiter.rate_limited,
            leases=self._leases,
            reports=self._reports,
            slots=self._slots,
            outages=limiter.outage.outages,
            outage_seconds=limiter.outage.paused_s,
            cpu_seconds=time.process_time() - self._cpu_started,
            loop_cpu_seconds=time.thread_time() - self._loop_cpu_started,
        )
