"""A worker actor: batches from the driver go out through the job kind with slots leased
from the coordinator, and come back as the rows the driver's writer commits, with what the
driver keeps beside them: the answers for its cache or journal and the attempts for its
event log.

The worker holds no credentials: its client sends the coordinator's token. It keeps no
state the run depends on, so a dead worker costs only the batches it held, which the
driver gives to another.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Awaitable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from batch.cache.answers import CachedAnswer
from batch.client import GigaChatClient
from batch.cluster.attempts import AttemptBuffer, LogRecord
from batch.cluster.coordinator import Grant, Lease, Report
from batch.cluster.leases import ClusterAuthenticator, HeldReservation, LeasedLimiter
from batch.errors import ApiError
from batch.outage import DEFAULT_MAX_OUTAGE
from batch.pricing import PriceTable
from batch.recording import AttemptRecorder
from batch.retry import RetryPolicy
from batch.reuse import answer_entries
from batch.sending import BatchSender
from batch.settings import ClientSettings, Secret
from batch.stopping import RunStop
from batch.summary import RunStats
from batch.writer import Outcomes
from jobs.base import Batch, JobKind, JobOutcome

NAMESPACE = "gigabatch"
# The settings a worker may see: every field but the secrets, which stay on the driver.
SECRET_FIELDS = ("credentials", "password", "access_token", "key_file_password")


def shareable_settings(settings: ClientSettings) -> dict[str, Any]:
    """`settings` without its secrets, to build a worker's client from."""
    return {
        f.name: getattr(settings, f.name)
        for f in dataclasses.fields(settings)
        if f.name not in SECRET_FIELDS
    }


@dataclass(frozen=True, slots=True)
class WorkerReply:
    """One batch done: its outcomes (None when the run stopped before it was sent), the
    worker's request counts so far (batches overlap, so per-batch differences would count
    twice: the driver keeps the highest it saw from each `owner`), the limit it saw, and a
    fatal error that stops the run.

    Beside them, what the worker gathered since its last reply (from any of its batches):
    `answers` for the driver's cache or journal, and `records` for its event log. With a
    budget, `unseen` says a try may have been billed unseen and used up the batch's
    reservation: the jobs not in `outcomes` were not sent again."""

    outcomes: Outcomes | None
    owner: str
    requests: int
    retries: int
    rate_limited: int
    limit: int
    fatal: tuple[type[ApiError], str, int | None, str | None] | None = None
    answers: list[tuple[bytes, CachedAnswer]] = field(default_factory=list)
    records: list[LogRecord] = field(default_factory=list)
    unseen: bool = False

    def fatal_error(self) -> ApiError | None:
        if self.fatal is None:
            return None
        error_type, message, status, request_id = self.fatal
        return error_type(message, status=status, request_id=request_id)


class RemoteCoordinator:
    """The coordinator's Ray actor handle as a `LeaseSource`."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def lease(self, owner: str, want: int, reports: list[Report]) -> Awaitable[Lease]:
        return self._handle.lease.remote(owner, want, reports)  # type: ignore[no-any-return]

    def report(self, owner: str, reports: list[Report]) -> Awaitable[float]:
        return self._handle.report.remote(owner, reports)  # type: ignore[no-any-return]

    def next_pause(self, known: float) -> Awaitable[float]:
        return self._handle.next_pause.remote(known)  # type: ignore[no-any-return]

    def token(self, newer_than: int) -> Awaitable[Grant]:
        return self._handle.token.remote(newer_than)  # type: ignore[no-any-return]

    def token_rejected(self, generation: int) -> Awaitable[Grant]:
        return self._handle.token_rejected.remote(generation)  # type: ignore[no-any-return]

    def forget(self, owner_prefix: str, keep: str) -> Awaitable[int]:
        return self._handle.forget.remote(owner_prefix, keep)  # type: ignore[no-any-return]


class BatchWorker:
    """One worker actor (`ray.remote(BatchWorker)` with `max_restarts=-1`). It starts on its
    first batch: a restarted incarnation first frees the slots its predecessor held."""

    def __init__(
        self,
        name: str,
        coordinator: str,
        kind: JobKind,
        settings: dict[str, Any],
        retry: RetryPolicy,
        max_connections: int,
        answers_keyed_by: str | None = None,
        max_outage: float = DEFAULT_MAX_OUTAGE,
    ) -> None:
        self._name = name
        self._owner = f"{name}/{uuid.uuid4().hex}"
        self._coordinator_name = coordinator
        self._kind = kind
        self._settings = settings
        self._retry = retry
        self._max_connections = max_connections
        self._answers_keyed_by = answers_keyed_by
        self._max_outage = max_outage
        self._answers: list[tuple[bytes, CachedAnswer]] = []
        self._records = AttemptBuffer()
        self._started: asyncio.Future[None] | None = None
        self._exit = AsyncExitStack()
        self._background: asyncio.Task[None] | None = None

    async def send(self, batch: Batch, budgeted: bool = False) -> WorkerReply:
        """Send `batch`; `budgeted`: under the one reservation the driver holds for it."""
        if self._started is None:
            self._started = asyncio.ensure_future(self._start())
        await asyncio.shield(self._started)
        stats = self._stats
        held = HeldReservation() if budgeted else None
        sender = self._sender if held is None else self._new_sender(held)
        outcomes = await sender.send(self._client, batch)
        error = self._stop.error
        fatal = None
        if isinstance(error, ApiError):
            fatal = (type(error), error.message, error.status, error.request_id)
        answers, self._answers = self._answers, []
        return WorkerReply(
            outcomes,
            self._owner,
            stats.requests,
            stats.retries,
            stats.rate_limited,
            self._limiter.limit,
            fatal,
            answers,
            self._records.drain(),
            held is not None and held.used_up,
        )

    def _keep_answers(self, outcomes: Sequence[JobOutcome]) -> None:
        if self._answers_keyed_by is not None:
            self._answers.extend(answer_entries(self._kind, outcomes, self._answers_keyed_by))

    def _new_sender(self, budget: HeldReservation | None) -> BatchSender:
        return BatchSender(
            kind=self._kind,
            limiter=self._limiter,
            retry=self._retry,
            stats=self._stats,
            stop=self._stop,
            budget=budget,
            recorder=self._recorder,
            on_answers=self._keep_answers,
        )

    async def _start(self) -> None:
        # Found by name, not passed: an actor handle among the constructor's arguments
        # would live in the object store, which Ray warns about for restartable actors.
        import ray

        handle = await asyncio.to_thread(ray.get_actor, self._coordinator_name, NAMESPACE)
        self._coordinator = RemoteCoordinator(handle)
        await self._coordinator.forget(f"{self._name}/", self._owner)
        # The client insists on some way in; its Authenticator is replaced at once, so this
        # placeholder is never sent.
        settings = ClientSettings(**self._settings, access_token=Secret("from-coordinator"))
        client = await self._exit.enter_async_context(
            GigaChatClient(settings, max_connections=self._max_connections)
        )
        client.auth = ClusterAuthenticator(settings, self._coordinator)
        self._client = client
        self._limiter = LeasedLimiter(self._coordinator, self._owner, self._max_outage)
        self._background = asyncio.ensure_future(self._limiter.run())
        prices = PriceTable.load()
        self._stats = RunStats(kind=self._kind.name, prices=prices)
        self._stop = RunStop(_NothingInFlight(), 0.0)
        self._recorder = AttemptRecorder(self._records, self._limiter, prices)
        self._sender = self._new_sender(None)

    async def close(self) -> None:
        if self._started is None:
            return
        await self._started
        if self._background is not None:
            self._background.cancel()
        await self._limiter.give_back()
        await self._exit.aclose()


class _NothingInFlight:
    """A worker's RunStop only carries the stop state: the grace period is the driver's."""

    in_flight = 0

    async def wait_changed(self) -> None:
        await asyncio.Event().wait()
