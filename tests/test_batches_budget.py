"""Budgets in `--mode batches` (batch/batches_budget.py): a file's tasks reserve their
ceilings all or none, a file that does not fit waits while other tasks are held and can
never fit once none are, and each task settles, is released or is charged at its ceiling."""

from __future__ import annotations

from batch.api_types import Usage
from batch.batches_budget import FileFit, TaskBudget
from batch.budget import Budget
from batch.pricing import PriceTable
from jobs.base import Batch, JobKind, SourceLocation
from jobs.registry import kind_for

PRICES = PriceTable.load()


def chat() -> JobKind:
    return kind_for("chat").bounded()


def tasks(kind: JobKind, prefix: str, n: int) -> dict[str, Batch]:
    return {
        f"{prefix}-{i}": Batch(
            [kind.job_from_record({"id": f"{prefix}{i}", "prompt": "hi", "max_tokens": 10},
                                  SourceLocation("j", i))]
        )
        for i in range(n)
    }


def ceiling(kind: JobKind, file: dict[str, Batch]) -> int:
    """The billed tokens `file`'s tasks reserve."""
    return sum(kind.reserve(b).prompt_tokens + kind.reserve(b).completion_tokens
               for b in file.values())


def budget(max_tokens: int) -> Budget:
    return Budget(max_cost=None, max_tokens=max_tokens, prices=PRICES)


def test_a_file_that_fits_reserves_every_task() -> None:
    kind = chat()
    file = tasks(kind, "a", 3)
    money = budget(10_000)
    assert TaskBudget(money, kind).reserve_file(file) is FileFit.RESERVED
    assert money.reserved_tokens == ceiling(kind, file)
    assert money.outstanding == 3


def test_a_file_that_does_not_fit_reserves_nothing_and_never_fits_when_nothing_is_held() -> None:
    kind = chat()
    file = tasks(kind, "a", 3)
    money = budget(ceiling(kind, file) - 1)
    assert TaskBudget(money, kind).reserve_file(file) is FileFit.NEVER
    assert (money.outstanding, money.reserved_tokens) == (0, 0)


def test_a_file_that_does_not_fit_beside_held_tasks_waits_for_them_to_settle() -> None:
    kind = chat()
    first, second = tasks(kind, "a", 2), tasks(kind, "b", 2)
    money = budget(ceiling(kind, first) + ceiling(kind, second) - 1)
    tasks_budget = TaskBudget(money, kind)
    assert tasks_budget.reserve_file(first) is FileFit.RESERVED
    assert tasks_budget.reserve_file(second) is FileFit.WAIT
    for task_id in first:
        tasks_budget.settle(task_id, Usage(prompt_tokens=5, completion_tokens=5), "GigaChat")
    assert money.spent_tokens == 20
    assert tasks_budget.reserve_file(second) is FileFit.RESERVED


def test_an_error_line_releases_and_a_lost_task_is_charged_at_its_ceiling() -> None:
    kind = chat()
    file = tasks(kind, "a", 2)
    money = budget(10_000)
    tasks_budget = TaskBudget(money, kind)
    tasks_budget.reserve_file(file)
    tasks_budget.release("a-0")
    tasks_budget.charge("a-1")
    assert money.outstanding == 0
    assert money.spent_tokens == ceiling(kind, {"a-1": file["a-1"]})


def test_a_resumed_batch_is_held_even_past_the_budget_and_blocks_new_files() -> None:
    kind = chat()
    resumed, new = tasks(kind, "a", 2), tasks(kind, "b", 1)
    money = budget(ceiling(kind, resumed) - 1)
    tasks_budget = TaskBudget(money, kind)
    tasks_budget.hold(resumed)
    assert money.reserved_tokens == ceiling(kind, resumed)
    assert tasks_budget.reserve_file(new) is FileFit.WAIT
