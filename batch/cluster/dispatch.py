"""The driver's dispatch on a cluster: each batch goes to the least busy worker actor, and
its reply comes back as the rows the run's writer commits. The driver does, for every
batch, what must have one owner for the whole cluster:

    the budget   reserve before the batch leaves, settle with the usage the reply reports,
                 release when nothing was answered (`batch.sending.BudgetGate`)
    reuse        keep the answers the reply brings in the run's cache or journal
    event log    write the attempts the reply brings into OUT/events.bin
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from batch.api_types import Usage
from batch.budget import Reservation
from batch.cache.answers import CachedAnswer
from batch.cluster.attempts import AttemptReplay
from batch.cluster.coordinator import CoordinatorReport
from batch.cluster.worker import WorkerReply
from batch.errors import ClusterLost
from batch.recording import AttemptLog
from batch.sending import BudgetGate, NotSent, priced_model
from batch.stopping import RunStop
from batch.summary import RunStats
from batch.writer import Outcomes
from jobs.base import Batch, JobKind

if TYPE_CHECKING:
    from batch.client import GigaChatClient

logger = logging.getLogger(__name__)

# A batch whose worker died goes to another; with no worker answering for this long the
# cluster is taken for lost and the run stops (what was answered is committed).
LOST_AFTER = 60.0


@dataclass(frozen=True)
class DriverDuties:
    """What the driver's run does with each reply beside writing its rows."""

    budget: BudgetGate | None = None
    keep_answers: Callable[[Sequence[tuple[bytes, CachedAnswer]]], None] | None = None
    events: AttemptLog | None = None
    announce: Callable[[str], None] | None = None  # outages, on the progress output


class _WorkerLost(Exception):
    """The worker holding a batch died: the batch goes to another."""


class ClusterSender:
    """Sends each batch through a worker actor, the least busy one; a batch whose worker
    died goes to another. Keeps the driver's `RunStats` as a local run's sender does."""

    def __init__(
        self,
        ray: Any,
        workers: list[Any],
        kind: JobKind,
        stats: RunStats,
        stop: RunStop,
        duties: DriverDuties | None = None,
    ) -> None:
        self._ray = ray
        self._workers = workers
        self._busy = [0] * len(workers)
        self._kind = kind
        self._default_model = str(kind.answer_settings().get("model") or "")
        self._stats = stats
        self._stop = stop
        self._duties = duties or DriverDuties()
        events = self._duties.events
        self._replay = AttemptReplay(events) if events is not None else None
        self._in_flight = 0
        self._changed = anyio.Event()
        self._last_answer = time.monotonic()
        self._counted: dict[str, tuple[int, int, int]] = {}
        self.lost_batches = 0
        self.report: CoordinatorReport | None = None
        # When the coordinator's outage in force began (wall clock; 0: none), as the
        # driver last heard of it: the progress line says PAUSED meanwhile.
        self.outage_since = 0.0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def outage_elapsed(self) -> float:
        """Seconds the cluster's outage has lasted (0 outside one)."""
        return max(0.0, time.time() - self.outage_since) if self.outage_since else 0.0

    async def wait_changed(self) -> None:
        changed = self._changed
        await changed.wait()

    def settled(self) -> float:
        return self.report.settled if self.report is not None else 0.0

    @property
    def found_limit(self) -> bool:
        return self.report.found_limit if self.report is not None else False

    async def send(self, client: GigaChatClient, batch: Batch) -> Outcomes | None:
        """Send `batch` through a worker; its outcomes, or None when the run stops first."""
        gate = self._duties.budget
        while not self._stop.stopping:
            reservation = None
            if gate is not None:
                try:
                    reservation = await gate.reserve(
                        self._kind.reserve(batch), priced_model(batch, self._default_model)
                    )
                except NotSent:
                    return None
            try:
                reply = await self._through_worker(batch, budgeted=gate is not None)
            except _WorkerLost:
                # The request may have been sent and billed before the worker died.
                self._charge_unseen(reservation)
                await anyio.sleep(0.2)
                continue
            except BaseException:
                if gate is not None:
                    gate.release(reservation)
                raise
            out = self._received(reply) if reply is not None else None
            if reply is not None and reply.unseen:
                self._charge_unseen(reservation)
                if out is None or not out.results:
                    continue  # nothing answered: the same batch, under a new reservation
                return await self._with_rest(client, batch, out)
            self._settle(reservation, out)
            return out
        return None

    async def _through_worker(self, batch: Batch, *, budgeted: bool) -> WorkerReply | None:
        """One batch through the least busy worker: its reply, or None when the worker's
        own code failed (the run then stops). Raises _WorkerLost when the worker died."""
        exceptions = self._ray.exceptions
        index = self._busy.index(min(self._busy))
        self._busy[index] += 1
        self._in_flight += 1
        try:
            reply: WorkerReply = await self._workers[index].send.remote(batch, budgeted)
        except exceptions.RayActorError as exc:
            self._worker_lost(exc)
            raise _WorkerLost from None
        except exceptions.RayError as exc:  # the worker's own code failed (coordinator gone)
            self._stop.stop(
                "fatal", f"a Ray worker failed: {_last_line(exc)}", ClusterLost(str(exc))
            )
            return None
        finally:
            self._busy[index] -= 1
            self._in_flight -= 1
            self._changed.set()
            self._changed = anyio.Event()
        self._last_answer = time.monotonic()
        return reply

    async def _with_rest(self, client: GigaChatClient, batch: Batch, out: Outcomes) -> Outcomes:
        """A batch partly answered before its reservation was used up: the rest of its jobs,
        packed anew, are sent under reservations of their own; all its rows together."""
        answered = {row["id"] for row in out.results}
        packer = self._kind.packer()
        rest: list[Batch] = []
        for job in batch.jobs:
            if job.id not in answered:
                rest.extend(packer.add(job))
        rest.extend(packer.flush())
        for part in rest:
            more = await self.send(client, part)
            if more is not None:
                out.results.extend(more.results)
                out.failures.extend(more.failures)
                for model, usage in more.usage.items():
                    out.usage[model] = out.usage.get(model, Usage()) + usage
                out.unknown_usage += more.unknown_usage
        return out

    def _settle(self, reservation: Reservation | None, out: Outcomes | None) -> None:
        gate = self._duties.budget
        if gate is None or reservation is None:
            return
        if out is None or not out.usage:
            gate.release(reservation)
            return
        total = sum(out.usage.values(), Usage())
        gate.settle(reservation, total, next(iter(out.usage)))

    def _charge_unseen(self, reservation: Reservation | None) -> None:
        gate = self._duties.budget
        if gate is not None and reservation is not None:
            gate.charge_unseen(reservation)

    def _worker_lost(self, exc: BaseException) -> None:
        self.lost_batches += 1
        logger.warning("a Ray worker was lost (%s); its batch goes to another", type(exc).__name__)
        if time.monotonic() - self._last_answer > LOST_AFTER:
            self._stop.stop(
                "fatal",
                f"no Ray worker answered for {LOST_AFTER:.0f} s: the cluster is lost "
                "(answered jobs are committed; re-run the same command to resume)",
                ClusterLost("Ray workers lost"),
            )

    def _received(self, reply: WorkerReply) -> Outcomes | None:
        stats = self._stats
        counts = (reply.requests, reply.retries, reply.rate_limited)
        seen = self._counted.get(reply.owner, (0, 0, 0))
        if counts > seen:  # replies can arrive out of order: keep each worker's highest
            self._counted[reply.owner] = counts
            stats.requests += counts[0] - seen[0]
            stats.retries += counts[1] - seen[1]
            stats.rate_limited += counts[2] - seen[2]
        stats.concurrency = reply.limit
        duties = self._duties
        if reply.answers and duties.keep_answers is not None:
            duties.keep_answers(reply.answers)
        if reply.records and self._replay is not None:
            self._replay.write(reply.records)
        error = reply.fatal_error()
        if error is not None:
            self._stop.stop("fatal", str(error), error)
        out = reply.outcomes
        if out is not None:
            for model, usage in out.usage.items():
                stats.add_usage(model, usage)
            stats.succeeded += len(out.results)
            stats.failed += len(out.failures)
        return out


def _last_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[-1] if lines else type(exc).__name__
