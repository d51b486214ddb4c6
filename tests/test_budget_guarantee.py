"""A budget holds even when answers would run long: a budgeted run sends max_tokens on every
chat request (the job's own, else --max-completion-tokens, else the default cap), reserves
exactly that, and the cap is part of the output's settings so resumes stay consistent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import anyio
import orjson
import pyarrow.dataset as ds
import pytest
from engine_fakes import FakeClient, FakeKind, write_jobs

from batch.api_types import Usage
from batch.emulator import RunningEmulator, profile, serve_emulator
from batch.emulator.tokens import MESSAGE_OVERHEAD, count_tokens
from batch.errors import RequestTimedOut, RunRefused
from batch.pricing import PriceTable
from batch.retry import RetryPolicy
from batch.run_config import RunConfig
from batch.runner import run_jobs
from batch.settings import ClientSettings
from batch.summary import RunSummary
from jobs.base import Batch, JobKind, SourceLocation
from jobs.chat import DEFAULT_COMPLETION_RESERVE, ChatKind, ChatOptions, prompt_ceiling
from jobs.tokens import text_token_ceiling

PRICES = PriceTable.load()
JOBS = 30
# Every answer the emulator would give is longer than the default cap.
LONG_ANSWERS = {"answer_tokens_min": 3000, "answer_tokens_max": 4000}


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    with serve_emulator(profile("fast", **LONG_ANSWERS)) as emu:
        yield emu


@pytest.fixture()
def jobs_file(tmp_path: Path) -> Path:
    path = tmp_path / "chat.jsonl"
    with path.open("wb") as out:
        for n in range(JOBS):
            out.write(orjson.dumps({"id": f"q{n}", "prompt": f"Расскажи подробно о {n}"}) + b"\n")
    return path


def run(
    emu: RunningEmulator,
    jobs: Path,
    out: Path,
    *,
    max_cost: float | None = None,
    max_tokens: int | None = None,
    options: ChatOptions | None = None,
) -> RunSummary:
    config = RunConfig(
        jobs_path=jobs,
        out_dir=out,
        kind=ChatKind(options or ChatOptions()),
        client_settings=ClientSettings.from_env(emu.client_env()),
        max_concurrency=8,
        prices=PRICES,
        max_cost=max_cost,
        max_tokens=max_tokens,
        progress="off",
        handle_signals=False,
    )
    return anyio.run(run_jobs, config)


def results(out: Path) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = ds.dataset(out / "results").to_table().to_pylist()
    return rows


def cost_of(rows: list[dict[str, object]]) -> float:
    return sum(
        PRICES.cost(
            str(r["model"]), Usage(int(str(r["prompt_tokens"])), int(str(r["completion_tokens"])))
        )
        for r in rows
    )


def test_budgeted_run_caps_long_answers_at_the_default_and_stays_within_max_cost(
    emulator: RunningEmulator, jobs_file: Path, tmp_path: Path
) -> None:
    # Enough for about a third of the jobs at the cap; uncapped answers would cost 3-4x more
    # than reserved and cross the budget.
    per_job = PRICES.cost("GigaChat", Usage(40, DEFAULT_COMPLETION_RESERVE))
    budget = round(per_job * JOBS / 3, 4)
    summary = run(emulator, jobs_file, tmp_path / "out", max_cost=budget)
    rows = results(tmp_path / "out")
    assert summary.status == "budget"
    assert 0 < len(rows) < JOBS
    assert {r["finish_reason"] for r in rows} == {"length"}
    assert {r["completion_tokens"] for r in rows} == {DEFAULT_COMPLETION_RESERVE}
    assert cost_of(rows) <= budget


def test_budgeted_run_never_bills_more_tokens_than_max_tokens_with_long_answers(
    emulator: RunningEmulator, jobs_file: Path, tmp_path: Path
) -> None:
    limit = 5 * DEFAULT_COMPLETION_RESERVE
    summary = run(emulator, jobs_file, tmp_path / "out", max_tokens=limit)
    rows = results(tmp_path / "out")
    assert summary.status == "budget"
    assert rows
    assert (
        sum(int(str(r["prompt_tokens"])) + int(str(r["completion_tokens"])) for r in rows) <= limit
    )


def test_budgeted_run_sends_max_completion_tokens_and_a_jobs_own_max_tokens(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    jobs = tmp_path / "chat.jsonl"
    jobs.write_bytes(
        orjson.dumps({"id": "own", "prompt": "коротко", "max_tokens": 30})
        + b"\n"
        + orjson.dumps({"id": "default", "prompt": "длинно"})
        + b"\n"
    )
    summary = run(
        emulator, jobs, tmp_path / "out", max_cost=100.0, options=ChatOptions(max_tokens=70)
    )
    by_id = {r["id"]: r for r in results(tmp_path / "out")}
    assert summary.status == "completed"
    assert by_id["own"]["completion_tokens"] == 30
    assert by_id["default"]["completion_tokens"] == 70
    assert {r["finish_reason"] for r in by_id.values()} == {"length"}


def test_resuming_a_budget_stop_with_a_higher_budget_finishes_under_the_same_cap(
    emulator: RunningEmulator, jobs_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    per_job = PRICES.cost("GigaChat", Usage(40, DEFAULT_COMPLETION_RESERVE))
    first = run(emulator, jobs_file, out, max_cost=round(per_job * JOBS / 3, 4))
    assert first.status == "budget"
    higher = round(per_job * JOBS * 2, 4)
    second = run(emulator, jobs_file, out, max_cost=higher)
    rows = results(out)
    assert second.status == "completed"
    assert sorted(str(r["id"]) for r in rows) == sorted(f"q{n}" for n in range(JOBS))
    assert {r["completion_tokens"] for r in rows} == {DEFAULT_COMPLETION_RESERVE}
    assert cost_of(rows) <= higher


def test_resuming_a_budgeted_run_without_a_budget_is_refused_naming_the_cap_option(
    emulator: RunningEmulator, jobs_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    run(emulator, jobs_file, out, max_tokens=3 * DEFAULT_COMPLETION_RESERVE)
    with pytest.raises(RunRefused, match="--max-completion-tokens") as refused:
        run(emulator, jobs_file, out)
    assert f"max_tokens: {DEFAULT_COMPLETION_RESERVE} -> None" in str(refused.value)


def test_resuming_a_budgeted_run_with_the_same_cap_and_no_budget_continues(
    emulator: RunningEmulator, jobs_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    run(emulator, jobs_file, out, max_tokens=3 * DEFAULT_COMPLETION_RESERVE)
    summary = run(
        emulator, jobs_file, out, options=ChatOptions(max_tokens=DEFAULT_COMPLETION_RESERVE)
    )
    assert summary.status == "completed"
    assert len(results(out)) == JOBS


def test_bounded_chat_kind_fingerprints_like_an_explicit_default_cap() -> None:
    bounded = ChatKind(ChatOptions()).bounded()
    explicit = ChatKind(ChatOptions(max_tokens=DEFAULT_COMPLETION_RESERVE))
    assert bounded.answer_settings() == explicit.answer_settings()
    assert ChatKind(ChatOptions()).answer_settings()["max_tokens"] is None


def test_bounded_chat_kind_keeps_the_commands_cap() -> None:
    kind = ChatKind(ChatOptions(max_tokens=200))
    assert kind.bounded().answer_settings()["max_tokens"] == 200


def test_prompt_ceiling_covers_the_emulators_billed_prompt_with_functions_and_calls() -> None:
    functions = [{"name": "weather", "parameters": {"type": "object", "properties": {}}}]
    body = {
        "model": "GigaChat",
        "messages": [
            {"role": "system", "content": "Ты — помощник. Отвечай кратко!!!"},
            {"role": "user", "content": "Погода в Москве? ... ;;; ,,,"},
            {"role": "assistant", "content": "", "function_call": {"name": "weather"}},
            {"role": "function", "name": "weather", "content": '{"t": -3, "sky": "ясно"}'},
        ],
        "functions": functions,
        "function_call": "auto",
    }
    billed = sum(count_tokens(m["content"]) + MESSAGE_OVERHEAD for m in body["messages"])
    billed += count_tokens(orjson.dumps(functions).decode())
    assert prompt_ceiling(body) >= billed
    kind = ChatKind(ChatOptions())
    job = kind.job_from_record(body, SourceLocation("x.jsonl", 1))
    assert kind.reserve(Batch(jobs=[job])).prompt_tokens == prompt_ceiling(job.request)


def test_prompt_ceiling_counts_a_call_in_an_assistant_message() -> None:
    plain = {"messages": [{"role": "assistant", "content": ""}]}
    call = {"role": "assistant", "content": "", "function_call": {"name": "f", "arguments": {}}}
    assert prompt_ceiling({"messages": [call]}) > prompt_ceiling(plain)


def test_text_token_ceiling_counts_bytes_of_characters_outside_two_byte_scripts() -> None:
    assert text_token_ceiling("abc") == 3
    assert text_token_ceiling("привет") == 6
    assert text_token_ceiling("日本") == 6
    assert text_token_ceiling("a😀") == 5


class _TimesOutOnce(FakeClient):
    """Each text's first request times out (the server may still have answered and billed
    it); the retry is answered."""

    def __init__(self) -> None:
        super().__init__()
        self.timed_out: set[str] = set()

    async def answer(self, texts: list[str]) -> list[str]:
        fresh = [t for t in texts if t not in self.timed_out]
        if fresh:
            self.timed_out.update(fresh)
            raise RequestTimedOut("no answer in time")
        return await super().answer(texts)


def test_a_timed_out_attempt_counts_against_the_budget_at_its_ceiling(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path / "jobs.jsonl", ["a", "b", "c"])
    client = _TimesOutOnce()
    config = RunConfig(
        jobs_path=jobs,
        out_dir=tmp_path / "out",
        kind=cast(JobKind, FakeKind()),
        client_factory=cast(Any, lambda: client),
        retry=RetryPolicy(max_attempts=3, initial=0.001, max_wait=0.01, jitter=0.001),
        max_concurrency=1,
        initial_concurrency=1,
        max_tokens=60,
        progress="off",
        handle_signals=False,
    )
    summary = anyio.run(run_jobs, config)
    # FakeKind reserves 20 tokens a job and bills 5. "a": lost attempt 20 + answer 5; "b":
    # lost attempt 20 (45 spent), and its retry could cross 60. Counting lost attempts as
    # free would have answered all three.
    assert summary.status == "budget"
    assert sorted(str(r["id"]) for r in results(tmp_path / "out")) == ["j0"]
    assert "spent 45 tokens of 60" in summary.message
