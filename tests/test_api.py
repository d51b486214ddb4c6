"""The Python API in each calling context, against the emulator: the main thread, a worker
thread, a running event loop (arun works, run refuses), two runs at once; errors are the
project's own, never exception groups; chat/embed return tables in input order."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import orjson
import pyarrow.parquet as pq
import pytest

import batch
from batch.emulator import RunningEmulator, profile, serve_emulator
from batch.emulator.content import embedding
from batch.errors import (
    AuthenticationFailed,
    BudgetExhausted,
    ConfigError,
    JobFileError,
    RowsFailed,
)

SAMPLES = Path(__file__).resolve().parent.parent / "sample_jobs"


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    with serve_emulator(profile("fast", seed=3)) as emu:
        yield emu


@pytest.fixture(scope="module")
def connection(emulator: RunningEmulator) -> dict[str, Any]:
    """The connection options that point the API at the emulator."""
    return {
        "base_url": emulator.base_url,
        "auth_url": emulator.auth_url,
        "credentials": emulator.credentials,
        "scope": emulator.scope,
    }


def write_jobs(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def numbered_prompts(count: int) -> list[str]:
    # The emulator answers with the prompt's words: the first word tells which prompt it was.
    return [f"{n} [[answer_tokens=3]]" for n in range(count)]


def test_run_in_the_main_thread_returns_the_figures_of_summary_json(
    tmp_path: Path, connection: dict[str, Any]
) -> None:
    out = tmp_path / "out"
    summary = batch.run(SAMPLES / "chat.jsonl", out, **connection)
    written = orjson.loads((out / "summary.json").read_bytes())
    assert summary.ok
    assert (summary.succeeded, summary.failed, summary.remaining) == (24, 0, 0)
    assert summary.succeeded == written["jobs"]["succeeded"]
    assert summary.cost == written["cost"]["this_run"] > 0
    assert summary.tokens.prompt_tokens == written["tokens"]["chat"]["prompt"] > 0
    assert summary.out == out
    assert batch.write_report(out) == out / "report.html"
    assert (out / "report.html").stat().st_size > 0


def test_run_in_a_worker_thread_leaves_signals_to_the_main_thread(
    tmp_path: Path, connection: dict[str, Any]
) -> None:
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["summary"] = batch.run(SAMPLES / "chat.jsonl", tmp_path / "out", **connection)
        except BaseException as exc:  # reported to the test thread below
            outcome["error"] = exc

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert "error" not in outcome, outcome.get("error")
    assert outcome["summary"].succeeded == 24


def test_run_inside_a_running_event_loop_raises_pointing_at_arun(
    tmp_path: Path, connection: dict[str, Any]
) -> None:
    async def notebook_cell() -> None:
        batch.run(SAMPLES / "chat.jsonl", tmp_path / "out", **connection)

    with pytest.raises(ConfigError, match=r"await batch\.arun\(\.\.\.\)"):
        asyncio.run(notebook_cell())
    assert not (tmp_path / "out").exists()


def test_arun_inside_a_running_event_loop_answers_every_job(
    tmp_path: Path, connection: dict[str, Any]
) -> None:
    async def notebook_cell() -> batch.RunSummary:
        return await batch.arun(
            SAMPLES / "embeddings.jsonl", tmp_path / "out", kind="embed", **connection
        )

    summary = asyncio.run(notebook_cell())
    assert summary.ok
    assert summary.succeeded == summary.total_jobs > 0


def test_two_concurrent_runs_in_two_threads_keep_apart(
    tmp_path: Path, connection: dict[str, Any]
) -> None:
    chat_jobs = write_jobs(
        tmp_path / "chat.jsonl",
        [{"id": f"c{n}", "prompt": p} for n, p in enumerate(numbered_prompts(60))],
    )
    texts = write_jobs(
        tmp_path / "texts.jsonl", [{"id": f"e{n}", "text": f"text {n}"} for n in range(90)]
    )
    start = threading.Barrier(2)
    summaries: dict[str, batch.RunSummary] = {}

    def work(name: str, jobs: Path, kind: str) -> None:
        start.wait()
        summaries[name] = batch.run(
            jobs, tmp_path / name, kind=kind, max_concurrency=4, **connection
        )

    threads = [
        threading.Thread(target=work, args=("chat", chat_jobs, "chat")),
        threading.Thread(target=work, args=("embed", texts, "embed")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (summaries["chat"].succeeded, summaries["embed"].succeeded) == (60, 90)
    chat_ids = set(pq.read_table(tmp_path / "chat" / "results").column("id").to_pylist())
    embed_ids = set(pq.read_table(tmp_path / "embed" / "results").column("id").to_pylist())
    assert chat_ids == {f"c{n}" for n in range(60)}
    assert embed_ids == {f"e{n}" for n in range(90)}


def test_an_invalid_job_file_raises_job_file_error(
    tmp_path: Path, connection: dict[str, Any]
) -> None:
    jobs = write_jobs(tmp_path / "bad.jsonl", [{"prompt": "ok"}, {"prompt": "x", "temperature": 0}])
    with pytest.raises(JobFileError) as caught:
        batch.run(jobs, tmp_path / "out", **connection)
    assert "line 2, field 'temperature'" in str(caught.value.problems[0])


def test_option_values_are_checked_like_the_command_line_naming_the_option(
    tmp_path: Path,
) -> None:
    with pytest.raises(
        ConfigError,
        match=r"max_concurrency \(--max-concurrency\): must be at "
        r"least 1, got 0",
    ):
        batch.run(SAMPLES / "chat.jsonl", tmp_path / "out", max_concurrency=0)
    with pytest.raises(ConfigError, match="did you mean max_cost"):
        batch.run(SAMPLES / "chat.jsonl", tmp_path / "out", max_costs=5)
    with pytest.raises(ConfigError, match="--max-completion-tokens: not an option of --kind embed"):
        batch.run(
            SAMPLES / "embeddings.jsonl", tmp_path / "out", kind="embed", max_completion_tokens=5
        )
    assert not (tmp_path / "out").exists()


def test_rejected_credentials_raise_the_fatal_error_itself_before_any_job(
    tmp_path: Path, connection: dict[str, Any]
) -> None:
    wrong = {**connection, "credentials": "d3Jvbmc6a2V5"}  # base64 of "wrong:key"
    with pytest.raises(AuthenticationFailed):
        batch.run(SAMPLES / "chat.jsonl", tmp_path / "out", **wrong)
    # Found by the start-up check, before the first job: raised whatever `check` says.
    with pytest.raises(AuthenticationFailed):
        batch.run(SAMPLES / "chat.jsonl", tmp_path / "out", check=False, **wrong)


def test_failed_rows_raise_rows_failed_carrying_the_summary(
    tmp_path: Path, connection: dict[str, Any]
) -> None:
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        [
            {"id": "ok", "prompt": "hello"},
            {"id": "gone", "prompt": "hello", "model": "NoSuchModel"},
        ],
    )
    with pytest.raises(RowsFailed) as caught:
        batch.run(jobs, tmp_path / "out", **connection)
    assert caught.value.exit_code == 3
    assert (caught.value.summary.succeeded, caught.value.summary.failed) == (1, 1)


def test_a_budget_stop_raises_budget_exhausted(tmp_path: Path, connection: dict[str, Any]) -> None:
    with pytest.raises(BudgetExhausted):
        batch.run(SAMPLES / "chat.jsonl", tmp_path / "out", max_cost=0.0001, **connection)


def test_embed_returns_one_row_per_text_in_input_order(connection: dict[str, Any]) -> None:
    texts = [f"text number {n}" for n in range(150)]
    table = batch.embed(texts, max_concurrency=8, batch_size=7, **connection)
    assert table.num_rows == 150
    assert table.column("id").to_pylist() == [str(n) for n in range(1, 151)]
    vectors = table.column("embedding").to_pylist()
    for text, vector in zip(texts, vectors, strict=True):
        assert vector == pytest.approx(embedding(text, "Embeddings", 1024), abs=1e-6)
    assert table.column("error_class").null_count == 150


def test_chat_returns_rows_in_input_order_with_failures_in_place(
    connection: dict[str, Any],
) -> None:
    prompts: list[str | dict[str, Any]] = list(numbered_prompts(40))
    prompts[5] = {"id": "own-id", "prompt": "5 [[answer_tokens=3]]", "model": "NoSuchModel"}
    table = batch.chat(prompts, max_concurrency=8, **connection)
    ids = table.column("id").to_pylist()
    assert ids[5] == "own-id"
    assert ids[:5] + ids[6:] == [str(n) for n in range(1, 41) if n != 6]
    contents = table.column("content").to_pylist()
    assert [c.split()[0] for i, c in enumerate(contents) if i != 5] == [
        str(n) for n in range(40) if n != 5
    ]
    assert table.column("error_class").to_pylist()[5] == "NotFound"
    assert contents[5] is None


def test_in_memory_work_leaves_no_temporary_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, connection: dict[str, Any]
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr("tempfile.tempdir", None)
    batch.embed(["one", "two"], **connection)
    assert list(scratch.iterdir()) == []


def test_achat_in_a_running_event_loop_and_chat_refuses_there(connection: dict[str, Any]) -> None:
    async def notebook_cell() -> int:
        with pytest.raises(ConfigError, match=r"batch\.achat"):
            batch.chat(["hi"], **connection)
        table = await batch.achat(["hi", "there"], **connection)
        return int(table.num_rows)

    assert anyio.run(notebook_cell) == 2


def test_progress_is_silent_by_default_and_a_text_bar_on_request(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], connection: dict[str, Any]
) -> None:
    batch.run(SAMPLES / "chat.jsonl", tmp_path / "quiet", **connection)
    assert capfd.readouterr().err == ""
    batch.run(SAMPLES / "chat.jsonl", tmp_path / "bar", progress="bar", **connection)
    err = capfd.readouterr().err
    assert "24/24" in err
    assert "job" in err


def test_estimate_offline_and_against_the_emulator(connection: dict[str, Any]) -> None:
    offline = batch.estimate(SAMPLES / "chat.jsonl", offline=True)
    counted = batch.estimate(SAMPLES / "chat.jsonl", **connection)
    assert not offline.exact_input
    assert counted.exact_input
    assert {m.model for m in counted.models} == {m.model for m in offline.models}
    assert "GigaChat" in {m.model for m in counted.models}
    assert all(m.input_tokens > 0 for m in counted.models)


def test_estimate_works_from_a_running_event_loop(connection: dict[str, Any]) -> None:
    async def notebook_cell() -> batch.Estimate:
        return batch.estimate(SAMPLES / "chat.jsonl", **connection)

    assert asyncio.run(notebook_cell()).exact_input
