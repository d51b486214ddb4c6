"""Budgets on runs, end to end against the emulator: a run stops before it could cross
--max-cost / --max-tokens, commits what it has, says what it spent, and a resume with a
higher budget carries on; the rows in results/ never cost more than the budget."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import orjson
import pyarrow.dataset as ds
import pytest

from batch.api_types import Usage
from batch.cli import EXIT_BUDGET
from batch.emulator import RunningEmulator, profile, serve_emulator
from batch.pricing import PriceTable
from batch.run_config import RunConfig
from batch.runner import run_jobs
from batch.settings import ClientSettings
from batch.summary import RunSummary
from jobs.registry import kind_for

PRICES = PriceTable.load()
JOBS = 200


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    with serve_emulator(profile("fast", answer_tokens_min=20, answer_tokens_max=120)) as emu:
        yield emu


@pytest.fixture()
def jobs_file(tmp_path: Path) -> Path:
    path = tmp_path / "chat.jsonl"
    with path.open("wb") as out:
        for n in range(JOBS):
            prompt = f"Вопрос номер {n}: " + " ".join(["budget", "слово"] * (n % 17 + 3))
            out.write(orjson.dumps({"id": f"q{n}", "prompt": prompt, "max_tokens": 100}) + b"\n")
    return path


def run(
    emu: RunningEmulator,
    jobs: Path,
    out: Path,
    *,
    max_cost: float | None = None,
    max_tokens: int | None = None,
) -> RunSummary:
    config = RunConfig(
        jobs_path=jobs,
        out_dir=out,
        kind=kind_for("chat"),
        client_settings=ClientSettings.from_env(emu.client_env()),
        max_concurrency=16,
        prices=PRICES,
        max_cost=max_cost,
        max_tokens=max_tokens,
        progress="off",
        handle_signals=False,
    )
    return anyio.run(run_jobs, config)


def spent(out: Path) -> tuple[int, float, int]:
    """Rows in results/, what they cost, and their billed tokens."""
    table = ds.dataset(out / "results").to_table()
    usages = [
        (model, Usage(p, c))
        for model, p, c in zip(
            table.column("model").to_pylist(),
            table.column("prompt_tokens").to_pylist(),
            table.column("completion_tokens").to_pylist(),
            strict=True,
        )
    ]
    cost = sum(PRICES.cost(model, usage) for model, usage in usages)
    tokens = sum(usage.total_tokens for _, usage in usages)
    return table.num_rows, cost, tokens


def full_cost(emu: RunningEmulator, jobs: Path, tmp_path: Path) -> tuple[float, int]:
    summary = run(emu, jobs, tmp_path / "unlimited")
    assert summary.status == "completed"
    _, cost, tokens = spent(tmp_path / "unlimited")
    return cost, tokens


def test_run_stops_before_crossing_max_cost_and_says_what_it_spent(
    emulator: RunningEmulator, jobs_file: Path, tmp_path: Path
) -> None:
    total, _ = full_cost(emulator, jobs_file, tmp_path)
    budget = round(total / 2, 4)
    summary = run(emulator, jobs_file, tmp_path / "out", max_cost=budget)
    rows, cost, _ = spent(tmp_path / "out")
    assert summary.status == "budget"
    assert 0 < rows < JOBS
    assert cost <= budget
    assert f"of {budget:.2f}" in summary.message and "left" in summary.message


def test_resuming_with_a_higher_budget_finishes_the_run_within_it(
    emulator: RunningEmulator, jobs_file: Path, tmp_path: Path
) -> None:
    total, _ = full_cost(emulator, jobs_file, tmp_path)
    out = tmp_path / "out"
    first = run(emulator, jobs_file, out, max_cost=round(total / 3, 4))
    assert first.status == "budget"
    rows_first, _, _ = spent(out)
    second_budget = round(total * 1.5, 4)
    second = run(emulator, jobs_file, out, max_cost=second_budget)
    rows, cost, _ = spent(out)
    assert second.status == "completed"
    assert rows == JOBS > rows_first
    assert cost <= second_budget


def test_resuming_with_the_same_budget_stays_within_it(
    emulator: RunningEmulator, jobs_file: Path, tmp_path: Path
) -> None:
    total, _ = full_cost(emulator, jobs_file, tmp_path)
    out = tmp_path / "out"
    budget = round(total / 2, 4)
    run(emulator, jobs_file, out, max_cost=budget)
    rows_before, _, _ = spent(out)
    again = run(emulator, jobs_file, out, max_cost=budget)
    rows_after, cost, _ = spent(out)
    assert again.status == "budget"
    assert cost <= budget
    # Whatever still fits may be sent, never more than the budget allows.
    assert rows_after >= rows_before


def test_run_never_spends_more_tokens_than_max_tokens(
    emulator: RunningEmulator, jobs_file: Path, tmp_path: Path
) -> None:
    _, tokens_total = full_cost(emulator, jobs_file, tmp_path)
    limit = tokens_total // 2
    summary = run(emulator, jobs_file, tmp_path / "out", max_tokens=limit)
    _, _, tokens = spent(tmp_path / "out")
    assert summary.status == "budget"
    assert tokens <= limit
    assert f"tokens of {limit}" in summary.message


def test_budget_smaller_than_one_request_sends_nothing(
    emulator: RunningEmulator, jobs_file: Path, tmp_path: Path
) -> None:
    emulator.reset_stats()
    summary = run(emulator, jobs_file, tmp_path / "out", max_cost=0.001)
    assert summary.status == "budget"
    requests = emulator.stats(arrivals=False)["requests"]
    assert "/api/v1/chat/completions" not in requests


def gigabatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from batch.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.e2e
def test_cli_run_stops_at_the_budget_with_exit_4_then_resumes_with_more(
    jobs_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    common = [
        "run",
        str(jobs_file),
        "--out",
        str(out),
        "--emulator",
        "--emulator-profile",
        "fast",
        "--quiet",
    ]
    # Each job costs about 0.02 RUB: a budget of 1 RUB stops the run part-way.
    first = gigabatch(*common, "--max-cost", "1")
    assert first.returncode == EXIT_BUDGET, first.stderr
    assert re.search(r"spent 0\.\d\d RUB of 1\.00, 0\.\d\d left", first.stderr), first.stderr
    rows, cost, _ = spent(out)
    assert 0 < rows < JOBS
    assert cost <= 1
    second = gigabatch(*common, "--max-cost", "100")
    assert second.returncode == 0, second.stderr
    rows, cost, _ = spent(out)
    assert rows == JOBS
    assert cost <= 100
