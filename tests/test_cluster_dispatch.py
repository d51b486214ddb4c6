"""The driver's dispatch on a cluster, with scripted worker actors (no Ray): the driver
owns the budget for every batch, reserving before it leaves, settling with the reply's
usage, charging at the ceiling what may have been billed unseen, and resending only the
jobs not answered."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
from engine_fakes import FakeKind

from batch.api_types import Usage
from batch.budget import Budget
from batch.cluster.dispatch import ClusterSender, DriverDuties
from batch.cluster.worker import WorkerReply
from batch.pricing import PriceTable
from batch.sending import BudgetGate
from batch.stopping import RunStop
from batch.summary import RunStats
from batch.writer import Outcomes
from jobs.base import Batch, Job, SourceLocation

MODEL = "GigaChat"
KIND = FakeKind(batch_size=2, model=MODEL)
PRICES = PriceTable.load()


class RayActorError(Exception):
    """Stands for `ray.exceptions.RayActorError`: the worker died."""


class RayError(Exception):
    """Stands for `ray.exceptions.RayError`."""


class _Exceptions:
    RayActorError = RayActorError
    RayError = RayError


class _Ray:
    exceptions = _Exceptions


class _Remote:
    def __init__(self, script: list[Callable[[Batch], WorkerReply]]) -> None:
        self.script = script
        self.sent: list[tuple[list[str], bool]] = []

    async def remote(self, batch: Batch, budgeted: bool) -> WorkerReply:
        self.sent.append(([job.id for job in batch.jobs], budgeted))
        return self.script.pop(0)(batch)


class _Worker:
    def __init__(self, *script: Callable[[Batch], WorkerReply]) -> None:
        self.send = _Remote(list(script))


def answered(*, unseen: bool = False, only: set[str] | None = None) -> Any:
    def reply(batch: Batch) -> WorkerReply:
        jobs = [job for job in batch.jobs if only is None or job.id in only]
        out = Outcomes(
            results=[{"id": job.id} for job in jobs],
            usage={MODEL: Usage(prompt_tokens=3 * len(jobs), completion_tokens=2 * len(jobs))},
        )
        return WorkerReply(out, "w0", 1, 0, 0, 4, unseen=unseen)

    return reply


def unanswered(*, unseen: bool) -> Any:
    return lambda batch: WorkerReply(None, "w0", 1, 0, 0, 4, unseen=unseen)


def died(batch: Batch) -> WorkerReply:
    raise RayActorError("the actor died")


def send(worker: _Worker) -> tuple[Outcomes | None, Budget]:
    budget = Budget(max_cost=None, max_tokens=10_000, prices=PRICES)
    jobs = [Job(i, SourceLocation("jobs.jsonl", n), {"text": i}) for n, i in enumerate("ab")]
    result: list[Outcomes | None] = []

    async def main() -> None:
        stats = RunStats(kind=KIND.name, prices=PRICES)
        stop = RunStop(_NoneInFlight(), 0.0)
        duties = DriverDuties(budget=BudgetGate(budget, stop))
        sender = ClusterSender(_Ray(), [worker], KIND, stats, stop, duties)
        result.append(await sender.send(None, Batch(jobs)))  # type: ignore[arg-type]

    anyio.run(main)
    return result[0], budget


class _NoneInFlight:
    in_flight = 0

    async def wait_changed(self) -> None:
        await anyio.sleep_forever()


CEILING = 40  # FakeKind reserves 10 + 10 tokens a job


def test_a_reply_settles_the_drivers_reservation_with_its_billed_usage() -> None:
    worker = _Worker(answered())
    out, budget = send(worker)
    assert out is not None and [r["id"] for r in out.results] == ["a", "b"]
    assert budget.spent_tokens == 10 and budget.outstanding == 0
    assert worker.send.sent == [(["a", "b"], True)]


def test_a_try_billed_unseen_is_charged_at_its_ceiling_and_resent_under_a_new_reservation() -> (
    None
):
    worker = _Worker(unanswered(unseen=True), answered())
    out, budget = send(worker)
    assert out is not None and len(out.results) == 2
    assert budget.spent_tokens == CEILING + 10 and budget.outstanding == 0
    assert [ids for ids, _ in worker.send.sent] == [["a", "b"], ["a", "b"]]


def test_a_worker_that_died_holding_a_batch_is_charged_at_its_ceiling() -> None:
    worker = _Worker(died, answered())
    out, budget = send(worker)
    assert out is not None and len(out.results) == 2
    assert budget.spent_tokens == CEILING + 10 and budget.outstanding == 0


def test_a_batch_partly_answered_before_its_reservation_ran_out_resends_only_the_rest() -> None:
    worker = _Worker(answered(unseen=True, only={"a"}), answered())
    out, budget = send(worker)
    assert out is not None and sorted(r["id"] for r in out.results) == ["a", "b"]
    assert worker.send.sent[1] == (["b"], True)
    assert out.usage[MODEL] == Usage(prompt_tokens=6, completion_tokens=4)
    assert budget.spent_tokens == CEILING + 5 and budget.outstanding == 0


def test_a_batch_nothing_answered_releases_its_reservation() -> None:
    worker = _Worker(unanswered(unseen=False))
    out, budget = send(worker)
    assert out is None
    assert budget.spent_tokens == 0 and budget.outstanding == 0
