"""A worker's send loop for one batch: reserve its worst-case cost (with a budget), take a
limiter slot (which waits out any run-wide pause and records the answer: success, 429 or
neither), send through the job kind, and retry per the run's policy.

    BudgetGate    reservations that wait while requests in flight may still settle lower
    BatchSender   one batch -> its Outcomes, or None when the run stops before it is sent
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Protocol

import anyio

from batch.api_types import Usage
from batch.budget import Budget, Reservation
from batch.errors import (
    ApiError,
    BudgetExhausted,
    ConnectionFailed,
    FatalError,
    RateLimited,
    RequestTimedOut,
    SendHeld,
)
from batch.limiter import Slot
from batch.outage import Outage
from batch.outcomes import answered_batch, failed_batch
from batch.retry import RetryPolicy, call_with_retry, retry_after_capped
from batch.stopping import RunStop
from batch.summary import RunStats
from batch.writer import Outcomes
from jobs.base import Batch, JobFailure, JobKind, JobOutcome

if TYPE_CHECKING:
    from batch.client import GigaChatClient
    from batch.recording import AttemptRecorder


class NotSent(Exception):
    """The run is stopping (or, on a cluster worker, the batch needs a new reservation
    from the driver): this batch is not sent and stays pending."""


class Reservations(Protocol):
    """How a sender meets the budget: the run's `BudgetGate`, or on a cluster worker the
    one reservation the driver holds for the batch (`batch.cluster.budget`)."""

    async def reserve(self, ceiling: Usage, model: str) -> Reservation: ...

    def settle(self, reservation: Reservation, actual: Usage, model: str) -> None: ...

    def charge_unseen(self, reservation: Reservation) -> None: ...

    def release(self, reservation: Reservation | None) -> None: ...


class BudgetGate:
    """The run's `Budget` as workers meet it: a reservation that does not fit yet waits for
    one in flight to settle or be released; one that can never fit stops the run."""

    def __init__(self, budget: Budget, stop: RunStop) -> None:
        self.budget = budget
        self._stop = stop
        self._changed = anyio.Event()

    async def reserve(self, ceiling: Usage, model: str) -> Reservation:
        """Hold `ceiling`, waiting while requests in flight might still settle below their
        reservations. Raises NotSent when the run stops (or this makes it stop)."""
        budget = self.budget
        while True:
            try:
                return budget.reserve(ceiling, model)
            except BudgetExhausted as exc:
                if budget.crossing(ceiling, model, with_reserved=False) is not None:
                    self._stop.stop("budget", f"budget reached; {budget.describe()}", exc)
                    raise NotSent from None
            changed = self._changed
            await changed.wait()
            if self._stop.stopping:
                raise NotSent

    def settle(self, reservation: Reservation, actual: Usage, model: str) -> None:
        self.budget.settle(reservation, actual, model)
        self._moved()

    def charge_unseen(self, reservation: Reservation) -> None:
        """A request that timed out or lost its connection may still have been answered
        and billed: it counts as spent at its ceiling, and a retry reserves anew."""
        self.settle(reservation, Usage(prompt_tokens=reservation.tokens), reservation.model)

    def release(self, reservation: Reservation | None) -> None:
        if reservation is not None:
            self.budget.release(reservation)
            self._moved()

    def _moved(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()


class SlotSource(Protocol):
    """Where a sender's slots come from: the run's `AdaptiveLimiter`, or on a cluster the
    slots a worker leased from the coordinator (`batch.cluster.leases.LeasedLimiter`)."""

    @property
    def limit(self) -> int: ...

    @property
    def outage(self) -> Outage: ...

    def slot(self, owner: object = None) -> AbstractAsyncContextManager[Slot]: ...


class BatchSender:
    """Sends batches for every worker of a run, and keeps the run's request counts."""

    def __init__(
        self,
        *,
        kind: JobKind,
        limiter: SlotSource,
        retry: RetryPolicy,
        stats: RunStats,
        stop: RunStop,
        budget: Reservations | None,
        recorder: AttemptRecorder | None = None,
        on_answers: Callable[[Sequence[JobOutcome]], None] | None = None,
    ) -> None:
        self.kind = kind
        self.limiter = limiter
        self.retry = retry
        self.stats = stats
        self.stop = stop
        self.budget = budget
        self.recorder = recorder
        # Told every answered batch's outcomes (the answer cache or journal keeps them).
        self.on_answers = on_answers
        self._default_model = str(kind.answer_settings().get("model") or "")

    async def send(self, client: GigaChatClient, batch: Batch) -> Outcomes | None:
        """Send one batch with retries; its outcomes, or None when the run stops first."""
        attempt = _Attempt(self, client, batch)
        try:
            await attempt.reserve()
            answers = await call_with_retry(
                attempt, self.retry, excused=self.limiter.outage.excuses
            )
        except NotSent:
            return self._unanswered(attempt, None)
        except FatalError as exc:
            self.stop.stop("fatal", str(exc), exc)
            return self._unanswered(attempt, None)
        except ApiError as exc:  # permanent, or retryable and out of attempts
            self.stats.retries += max(0, attempt.count - 1)
            return self._unanswered(attempt, exc)
        except BaseException:
            attempt.release()
            raise
        self.stats.retries += attempt.count - 1
        return self._answered(answers, attempt)

    def _unanswered(self, attempt: _Attempt, failure: ApiError | None) -> Outcomes | None:
        """A batch not answered as a whole. Jobs an earlier try got answers for (billed)
        are results all the same, counted in the summary and the budget; the others fail
        with `failure`, or stay pending when the run stops (None: nothing to write)."""
        batch = attempt.batch
        received = self.kind.received(batch)
        if received:
            out = self._answered(received, attempt)
        else:
            attempt.release()
            if failure is None:
                return None
            out = Outcomes()
        if failure is not None:
            answered = {id(outcome.job) for outcome in received}
            rest = Batch([job for job in batch.jobs if id(job) not in answered], batch.payload)
            self.stats.failed += len(rest.jobs)
            out.failures.extend(failed_batch(rest, failure, attempt.count).failures)
        return out

    def _answered(self, answers: Sequence[JobOutcome], attempt: _Attempt) -> Outcomes:
        if self.on_answers is not None:
            self.on_answers(answers)
        out = answered_batch(answers, attempt.count, attempt.latency)
        if out.unknown_usage:
            self._at_ceiling(out, attempt.batch)
        for model, usage in out.usage.items():
            self.stats.add_usage(model, usage)
        self.stats.succeeded += len(out.results)
        self.stats.failed += len(out.failures)
        reservation = attempt.reservation
        if reservation is not None and self.budget is not None:
            total = sum(out.usage.values(), Usage())
            answered_by = next(
                (o.model for o in reversed(answers) if not isinstance(o, JobFailure)), ""
            )
            self.budget.settle(reservation, total, answered_by or reservation.model)
        return out

    def _at_ceiling(self, out: Outcomes, batch: Batch) -> None:
        """An answer without a readable usage is counted at its batch's ceiling (the
        budget's reservation) in the parts, the summary and the budget: never as free."""
        ceiling = self.kind.reserve(batch)
        known = sum(out.usage.values(), Usage())
        if ceiling.total_tokens > known.total_tokens:
            model = next(iter(out.usage), self.model(batch))
            out.usage = {model: ceiling}
        self.stats.unknown_usage += out.unknown_usage

    def model(self, batch: Batch) -> str:
        """The model a batch is priced at before it is answered."""
        return priced_model(batch, self._default_model)


def priced_model(batch: Batch, default_model: str) -> str:
    """The model a batch is priced at before it is answered: its jobs', else the kind's."""
    model = batch.jobs[0].request.get("model") if batch.jobs else None
    return str(model) if model else default_model


class _Attempt:
    """The tries of one batch: each holds a reservation (with a budget) and a limiter slot."""

    def __init__(self, sender: BatchSender, client: GigaChatClient, batch: Batch) -> None:
        self.sender = sender
        self.client = client
        self.batch = batch
        self.count = 0
        self.latency = 0.0
        self.reservation: Reservation | None = None

    async def reserve(self) -> None:
        gate = self.sender.budget
        if self.reservation is None and gate is not None:
            ceiling = self.sender.kind.reserve(self.batch)
            self.reservation = await gate.reserve(ceiling, self.sender.model(self.batch))

    def release(self) -> None:
        if self.sender.budget is not None:
            self.sender.budget.release(self.reservation)
        self.reservation = None

    async def __call__(self) -> Sequence[JobOutcome]:
        sender = self.sender
        await self.reserve()  # the last try's was charged
        recorder = sender.recorder
        sent: Slot | None = None
        try:
            async with sender.limiter.slot(owner=self) as slot:
                if sender.stop.stopping:
                    raise NotSent
                sent = slot
                self.count += 1
                sender.stats.requests += 1
                sender.stats.concurrency = sender.limiter.limit
                with retry_after_capped(sender.retry):
                    answers = await sender.kind.send(self.client, self.batch)
                self.latency = time.monotonic() - slot.sent_at
        except BaseException as exc:
            if isinstance(exc, SendHeld):  # the transport held it back: it never left
                self.count -= 1
                sender.stats.requests -= 1
                sent = None
            # Recorded after the slot has told the limiter, so the log sees the new level.
            if recorder is not None and sent is not None:
                recorder.failed(sent, len(self.batch.jobs), exc)
            if isinstance(exc, ApiError):
                self._failed_try(exc)
            raise
        if recorder is not None and sent is not None:
            recorder.answered(sent, len(self.batch.jobs), answers)
        return answers

    def _failed_try(self, exc: ApiError) -> None:
        sender = self.sender
        if isinstance(exc, RateLimited):
            sender.stats.rate_limited += 1
        elif isinstance(exc, RequestTimedOut | ConnectionFailed):
            if self.reservation is not None and sender.budget is not None:
                sender.budget.charge_unseen(self.reservation)
            self.reservation = None
        if sender.limiter.outage.expired:
            raise sender.limiter.outage.give_up() from None
