"""How a run stops: the first reason wins (a fatal API error, the budget, a read error, a
signal), the producer stops at once, and requests in flight get the grace period before the
workers are cancelled. Whatever was answered is still committed by the writer.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio
from anyio.abc import TaskStatus

from batch.errors import GigabatchError, Interrupted


class InFlight(Protocol):
    """What the grace period watches: the run's `AdaptiveLimiter`, or on a cluster the
    driver's count of batches out with the workers."""

    @property
    def in_flight(self) -> int: ...

    async def wait_changed(self) -> None: ...


# The status ("interrupted: ...") already says what happened; the message says what now.
_RESUME = "answered jobs are committed; run the same command again to resume"
# The GIL switch interval while a thread validates and the main thread only waits for a
# signal. With CPython's 5 ms default the main thread, woken by the signal, needs several GIL
# hand-offs to see it, and a CPU-bound thread that also releases the GIL for its reads keeps
# winning them: measured 0.1-3.1 s from SIGTERM to the handler (8 runs, 400k lines), against
# 0.02-0.03 s at 0.2 ms. The validating thread is the only busy one, so nothing else pays.
_VALIDATING_SWITCH_INTERVAL = 0.0002


def can_handle_signals() -> bool:
    """Only the main thread can install signal handlers: a run in another thread (an
    Airflow worker, `batch.run` in a thread pool) leaves signals to its host."""
    return threading.current_thread() is threading.main_thread()


class EarlySignals:
    """Ctrl-C and SIGTERM before the run's workers exist (validation, opening the
    checkpoint): `watch` remembers the signal (with a short GIL switch interval meanwhile,
    so the main thread sees it at once), and `check`, called by the validating thread every
    few hundred records, stops it with Interrupted, so the process exits within a moment
    with 130 or 143 and a message, having sent nothing."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def check(self) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum)

    async def watch(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Remember the signals that come; started once the handlers are installed."""
        if not can_handle_signals():
            task_status.started()
            return
        interval = sys.getswitchinterval()
        sys.setswitchinterval(min(interval, _VALIDATING_SWITCH_INTERVAL))
        try:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                task_status.started()
                async for signum in signals:
                    self.signum = signum
        finally:
            sys.setswitchinterval(interval)


async def interruptible(step: Callable[[], Awaitable[None]], during: str) -> None:
    """Run `step` (the start-up check) so that Ctrl-C or SIGTERM meanwhile stops it with
    Interrupted(`during`): between validation and the run's own handlers a signal would
    otherwise kill the process by its default action, with no message."""
    if not can_handle_signals():
        await step()
        return
    caught: list[int] = []
    failure: BaseException | None = None

    async def watch(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                caught.append(signum)
                group.cancel_scope.cancel()

    async with anyio.create_task_group() as group:
        await group.start(watch)
        try:
            await step()
        except Exception as exc:  # raised outside the group, not in an ExceptionGroup
            failure = exc
        group.cancel_scope.cancel()
    if caught:
        raise Interrupted(caught[0], during)
    if failure is not None:
        raise failure


class RunStop:
    """The run's stop state, and the two side tasks that act on it (`grace`, `watch_signals`)."""

    def __init__(self, limiter: InFlight, grace_period: float) -> None:
        self.limiter = limiter
        self.grace_period = grace_period
        self.status = "completed"
        self.message = ""
        self.stopping = False
        self.error: GigabatchError | None = None
        self.producer_scope = anyio.CancelScope()
        self.workers_scope = anyio.CancelScope()
        self._stopped = anyio.Event()

    def stop(self, status: str, message: str, error: GigabatchError | None = None) -> None:
        """Stop taking jobs; requests in flight get the grace period. The first reason wins
        (and an `error` is kept with it, even when a reason came first)."""
        if error is not None:
            self.error = error
        if self.stopping:
            return
        self.stopping = True
        self._stopped.set()
        self.status = status
        self.message = message
        self.producer_scope.cancel()

    async def grace(self) -> None:
        """Once stopping: cancel the workers when nothing is in flight any more (the rest
        only wait for a slot, a pause or a backoff) or when the grace period is over."""
        await self._stopped.wait()
        with anyio.move_on_after(self.grace_period):
            while self.limiter.in_flight > 0:
                await self.limiter.wait_changed()
        self.workers_scope.cancel()

    async def watch_signals(self) -> None:
        """Ctrl-C or SIGTERM stops the run; a second one stops waiting for requests in flight.
        Only the main thread can install signal handlers: a run in another thread (an
        Airflow worker, `batch.run` in a thread pool) leaves signals to its host."""
        if not can_handle_signals():
            return
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                if self.stopping:
                    self.workers_scope.cancel()
                    continue
                if signum == signal.SIGINT:
                    self.stop("interrupted", "Ctrl-C; " + _RESUME)
                else:
                    self.stop("terminated", "SIGTERM; " + _RESUME)
