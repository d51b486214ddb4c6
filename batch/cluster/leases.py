"""A worker's side of the coordinator: slots leased k at a time, the run-wide pause, and
the cluster's token, behind the interfaces the engine already uses (`limiter.slot()` and
the client's `Authenticator`), so a worker runs the ordinary `BatchSender`.

    LeasedLimiter        `async with limiter.slot()`: a leased slot, reported in batches
    ReportedOutage       the coordinator's outage as this worker last heard of it
    HeldReservation      the one budget reservation the driver holds for a batch
    ClusterAuthenticator the token the coordinator hands out; a 401 asks it for a new one
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from types import TracebackType
from typing import Protocol

import anyio
import httpx

from batch.api_types import Usage
from batch.auth import Authenticator
from batch.budget import Reservation
from batch.cluster.coordinator import (
    AWAY,
    ERROR,
    OK,
    REFUSED,
    UNANSWERED,
    Grant,
    Lease,
    Report,
)
from batch.errors import ApiError, AuthenticationFailed, ConfigError, RateLimited, SendHeld
from batch.limiter import Slot
from batch.outage import DEFAULT_MAX_OUTAGE, OUTAGE_ERRORS, Outage
from batch.sending import NotSent
from batch.settings import ClientSettings
from batch.wire import ApiRequest

# Reports wait this long to be sent together; a 429 is sent at once.
REPORT_DELAY = 0.002
# A worker asks the coordinator for the token at least this often, so a token the driver
# refreshed ahead of its expiry reaches every worker long before the old one ends.
TOKEN_TTL = 5.0


class LeaseSource(Protocol):
    """The coordinator as a worker calls it (a Ray actor handle behind an adapter, or a
    `Coordinator` in the same process)."""

    def lease(self, owner: str, want: int, reports: list[Report]) -> Awaitable[Lease]: ...

    def report(self, owner: str, reports: list[Report]) -> Awaitable[float]: ...

    def next_pause(self, known: float) -> Awaitable[float]: ...

    def token(self, newer_than: int) -> Awaitable[Grant]: ...

    def token_rejected(self, generation: int) -> Awaitable[Grant]: ...


class LeasedSlot(Slot):
    """A `Slot` whose permit is one of the slots this worker leased from the coordinator."""

    __slots__ = ("_id", "_leases", "_request")

    def __init__(self, leases: LeasedLimiter, owner: object) -> None:
        self._leases = leases
        self._request = id(owner) if owner is not None else id(self)
        self._id = 0
        self._refused = False
        self._retry_after = None
        self.sent_at = 0.0
        self.epoch = 0
        self.in_flight = 0

    async def __aenter__(self) -> LeasedSlot:
        self._id = await self._leases._take()
        self.sent_at = time.monotonic()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        leases, slot, request = self._leases, self._id, self._request
        if isinstance(exc, RateLimited):
            leases._returned(Report(slot, REFUSED, exc.retry_after, request))
        elif self._refused:
            leases._returned(Report(slot, REFUSED, self._retry_after, request))
        elif exc is None:
            leases._returned(Report(slot, OK, None, request))
        elif isinstance(exc, OUTAGE_ERRORS):
            # Reported at once, and the verdict heard before the sender sees the error:
            # an outage the coordinator begins now excuses this very failure.
            await leases._report_at_once(Report(slot, AWAY, None, request))
        elif isinstance(exc, ApiError) and not isinstance(exc, SendHeld):
            leases._returned(Report(slot, ERROR, None, request))
        else:
            leases._returned(Report(slot, UNANSWERED, None, request))


class LeasedLimiter:
    """Slots for one worker's requests, leased from the coordinator as many at a time as
    requests are waiting. `run()` (a background task) sends reports and follows the pause."""

    def __init__(
        self, source: LeaseSource, owner: str, max_outage: float = DEFAULT_MAX_OUTAGE
    ) -> None:
        self._source = source
        self.owner = owner
        self.limit = 1
        self._pool: list[int] = []
        self._waiting = 0
        self._leasing = False
        self._granted = anyio.Event()
        self._reports: list[Report] = []
        self._pending = anyio.Event()
        self._pause_until = 0.0
        self.leases = 0
        # The sender asks whether an outage excuses a failure: the coordinator's verdict.
        self.outage = ReportedOutage(max_outage)

    def slot(self, owner: object = None) -> LeasedSlot:
        return LeasedSlot(self, owner)

    @property
    def pause_remaining(self) -> float:
        return max(0.0, self._pause_until - time.time())

    async def _take(self) -> int:
        while True:
            await self._pause_over()
            if self._pool:
                return self._pool.pop()
            self._waiting += 1
            try:
                if self._leasing:
                    granted = self._granted
                    await granted.wait()
                else:
                    await self._lease()
            finally:
                self._waiting -= 1

    async def _pause_over(self) -> None:
        # The pause can be extended while waiting (a report, the coordinator's news).
        while True:
            delay = self._pause_until - time.time()
            if delay <= 0:
                return
            await anyio.sleep(delay)

    async def _lease(self) -> None:
        self._leasing = True
        reports, self._reports = self._reports, []
        try:
            # Shielded: slots granted must arrive here, or the coordinator counts them in
            # flight for ever.
            with anyio.CancelScope(shield=True):
                lease = await self._source.lease(self.owner, max(1, self._waiting), reports)
        finally:
            self._leasing = False
            granted, self._granted = self._granted, anyio.Event()
            granted.set()
        self.leases += 1
        self._pool.extend(lease.slots)
        self.limit = lease.limit
        self._pause_until = max(self._pause_until, lease.pause_until)
        self._follow_outage(lease.outage_since)

    def _follow_outage(self, since: float) -> None:
        if self.outage.follow(since) and self._pool:
            # An outage began: slots held here would send past its single probe.
            self._reports.extend(Report(slot, UNANSWERED) for slot in self._pool)
            self._pool.clear()
            self._pending.set()

    async def _report_at_once(self, report: Report) -> None:
        self._reports.append(report)
        await self.flush()

    def _returned(self, report: Report) -> None:
        self._reports.append(report)
        if report.outcome == REFUSED and report.retry_after is not None:
            # This worker stops at once; the others hear of it through the coordinator.
            self._pause_until = max(self._pause_until, time.time() + report.retry_after)
        self._pending.set()

    async def run(self) -> None:
        """Send reports in batches and follow the run-wide pause, until cancelled."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._follow_pause)
            while True:
                await self._pending.wait()
                if not any(r.outcome == REFUSED for r in self._reports):
                    await anyio.sleep(REPORT_DELAY)
                self._pending = anyio.Event()
                await self.flush()

    async def flush(self) -> None:
        reports, self._reports = self._reports, []
        if reports:
            with anyio.CancelScope(shield=True):
                since = await self._source.report(self.owner, reports)
            self._follow_outage(since)

    async def give_back(self) -> None:
        """Return the unused leased slots (the worker is closing)."""
        self._reports.extend(Report(slot, UNANSWERED) for slot in self._pool)
        self._pool.clear()
        await self.flush()

    async def _follow_pause(self) -> None:
        while True:
            until = await self._source.next_pause(self._pause_until)
            self._pause_until = max(self._pause_until, until)


class ReportedOutage(Outage):
    """The coordinator's outage as this worker last heard of it (with every lease and
    report): the sender asks it whether a failure is excused, and when `max_outage` has
    passed. Beginning, probing and ending are the coordinator's."""

    def __init__(self, max_outage: float) -> None:
        super().__init__(max_outage=max_outage)

    def follow(self, since: float) -> bool:
        """The coordinator's outage began at `since` (wall clock; 0: none is in force);
        True when this worker learns of it now."""
        began = not self.active and since > 0
        self.active = since > 0
        if self.active:
            self.began = time.monotonic() - max(0.0, time.time() - since)
            self._began_wall = since
        return began


class HeldReservation:
    """The budget as a worker meets it for one batch: the driver reserved its ceiling
    before sending it here, and settles it with the usage the reply reports. A try that
    may have been billed unseen (a timeout, a lost connection) uses the reservation up, so
    the batch goes back to the driver (`NotSent`), which reserves anew before it is sent
    again: the cluster never spends past what the driver reserved."""

    def __init__(self) -> None:
        self.used_up = False

    async def reserve(self, ceiling: Usage, model: str) -> Reservation:
        if self.used_up:
            raise NotSent
        return Reservation(0, model, ceiling.total_tokens, 0.0)

    def settle(self, reservation: Reservation, actual: Usage, model: str) -> None:
        """The driver settles (it alone holds the budget)."""

    def charge_unseen(self, reservation: Reservation) -> None:
        self.used_up = True

    def release(self, reservation: Reservation | None) -> None:
        """The driver releases its reservation when the reply brings no answer."""


async def _never_fetched(request: ApiRequest) -> httpx.Response:
    raise ConfigError("a cluster worker has no credentials: its token comes from the coordinator")


class ClusterAuthenticator(Authenticator):
    """The token a worker sends comes from the coordinator, never from credentials (the
    worker has none): one refresh for the whole cluster, made by the driver."""

    def __init__(self, settings: ClientSettings, source: LeaseSource) -> None:
        super().__init__(settings, _never_fetched)
        self._source = source
        self._grant: Grant | None = None
        self._fetched = 0.0

    @property
    def can_refresh(self) -> bool:
        return True

    @property
    def method(self) -> str:
        return "token from the cluster's coordinator"

    async def authorization(self) -> tuple[str | None, int]:
        grant = self._grant
        if grant is None or time.monotonic() - self._fetched > TOKEN_TTL:
            grant = self._use(await self._source.token(0))
        return grant.header, grant.generation

    async def unauthorized(self, generation: int, error: ApiError) -> None:
        self._use(await self._source.token_rejected(generation))

    def _use(self, grant: Grant) -> Grant:
        if grant.failure is not None:
            raise AuthenticationFailed(grant.failure)
        self._grant = grant
        self._fetched = time.monotonic()
        return grant
