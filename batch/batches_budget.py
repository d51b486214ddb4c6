"""Budgets (`--max-cost`, `--max-tokens`) in `--mode batches`: before a file is uploaded,
each of its tasks reserves the kind's ceiling for its request (`kind.reserve`), all or none;
each task settles when its output line is read. The online engine's `Budget` keeps the sums,
so the same guarantee holds: spent + reserved + the next file's ceilings never cross a limit.

    result line        settled with the usage of the rows it wrote
    error line         released: the server answered with an error, as an online 4xx/5xx
    no line, expired   charged at the ceiling: the server may have answered and billed it
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum

from batch.api_types import Usage
from batch.budget import Budget, Reservation
from batch.errors import BudgetExhausted
from batch.sending import priced_model
from jobs.base import Batch, JobKind


class FileFit(Enum):
    """Whether a file's ceilings fit the budget: now, after waiting batches settle, never."""

    RESERVED = "reserved"
    WAIT = "wait"
    NEVER = "never"


class TaskBudget:
    """The reservations of the tasks on the server, by task id (unique across files)."""

    def __init__(self, budget: Budget, kind: JobKind) -> None:
        self.budget = budget
        self.kind = kind
        self._default_model = str(kind.answer_settings().get("model") or "")
        self._held: dict[str, Reservation] = {}

    def reserve_file(self, tasks: Mapping[str, Batch]) -> FileFit:
        """Reserve every task of a file about to be uploaded, or none of them. A file that
        does not fit while nothing else is held can never fit: spending only grows."""
        made: dict[str, Reservation] = {}
        try:
            for task_id, batch in tasks.items():
                made[task_id] = self.budget.reserve(*self._ceiling(batch))
        except BudgetExhausted:
            for reservation in made.values():
                self.budget.release(reservation)
            return FileFit.WAIT if self._held else FileFit.NEVER
        self._held.update(made)
        return FileFit.RESERVED

    def hold(self, tasks: Mapping[str, Batch]) -> None:
        """Reserve the tasks of a batch an earlier run uploaded, fitting or not."""
        for task_id, batch in tasks.items():
            self._held[task_id] = self.budget.hold(*self._ceiling(batch))

    def settle(self, task_id: str, usage: Usage, model: str) -> None:
        reservation = self._held.pop(task_id, None)
        if reservation is not None:
            self.budget.settle(reservation, usage, model or reservation.model)

    def release(self, task_id: str) -> None:
        reservation = self._held.pop(task_id, None)
        if reservation is not None:
            self.budget.release(reservation)

    def charge(self, task_id: str) -> None:
        """A task whose fate is unknown counts as spent at its ceiling."""
        reservation = self._held.pop(task_id, None)
        if reservation is not None:
            charged = Usage(prompt_tokens=reservation.tokens)
            self.budget.settle(reservation, charged, reservation.model)

    def describe(self) -> str:
        return self.budget.describe()

    def _ceiling(self, batch: Batch) -> tuple[Usage, str]:
        return self.kind.reserve(batch), priced_model(batch, self._default_model)
