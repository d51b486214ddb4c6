"""A third job kind, defined and registered here and nowhere else, goes through `run` and
`estimate` (the engine's functions and the command line) against the emulator: adding a
kind touches `jobs/`'s interface only. And the engine names no kind of its own."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import anyio
import orjson
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from click.testing import CliRunner

from batch import wire
from batch.api_types import ChatCompletion, Usage
from batch.cli import main
from batch.client import GigaChatClient
from batch.emulator import RunningEmulator, profile, serve_emulator
from batch.estimator import EstimateRequest, estimate_jobs
from batch.pricing import PriceTable
from batch.run_config import RunConfig
from batch.runner import run_jobs
from batch.settings import ClientSettings
from jobs.base import (
    Batch,
    BilledInput,
    Job,
    JobKind,
    JobOutcome,
    JobResult,
    KindOptions,
    SourceLocation,
)
from jobs.registry import cli_options, kind_for, kind_names, register
from jobs.validation import RecordFields, json_text

ENGINE = Path(__file__).resolve().parent.parent / "batch"
INSTRUCTION = "Rewrite the text in capital letters."
ANSWER_CAP = 64
OVERHEAD_PER_MESSAGE = 3  # what the emulator bills per message beyond /tokens/count


class OnePerRequest:
    def add(self, job: Job) -> list[Batch]:
        return [Batch(jobs=[job])]

    def flush(self) -> list[Batch]:
        return []


@register
class ShoutKind(JobKind):
    """Each line's `text` rewritten in capitals by a chat model: one request per job."""

    name: ClassVar[str] = "shout"
    aliases: ClassVar[tuple[str, ...]] = ("caps",)
    batch_api_method: ClassVar[str] = "chat_completions"
    summary: ClassVar[str] = "a text to rewrite in capitals"

    def __init__(self, options: KindOptions | None = None) -> None:
        super().__init__(options or KindOptions())
        self.model = self.options.model or "GigaChat"
        self.fields = {"id": "id", "text": self.options.text_column or "text"}

    def job_from_record(self, record: Mapping[str, Any], location: SourceLocation) -> Job:
        fields = RecordFields(record, location, self.fields)
        job_id = fields.job_id()
        text = fields.string("text")
        fields.check()
        return Job(job_id, location, {"text": text})

    def source_fields(self) -> Mapping[str, str]:
        return self.fields

    def answer_settings(self) -> Mapping[str, Any]:
        return {"kind": self.name, "model": self.model, "instruction": INSTRUCTION}

    def packer(self) -> OnePerRequest:
        return OnePerRequest()

    def reserve(self, batch: Batch) -> Usage:
        (job,) = batch.jobs
        prompt = len(INSTRUCTION) + len(job.request["text"]) + 4 * OVERHEAD_PER_MESSAGE
        return Usage(prompt_tokens=prompt, completion_tokens=ANSWER_CAP)

    def request_body(self, batch: Batch) -> dict[str, Any]:
        (job,) = batch.jobs
        return {
            "model": self.model,
            "messages": [
                {"role": "system", "content": INSTRUCTION},
                {"role": "user", "content": job.request["text"]},
            ],
            "max_tokens": ANSWER_CAP,
        }

    def outcomes(self, batch: Batch, body: Mapping[str, Any]) -> Sequence[JobOutcome]:
        (job,) = batch.jobs
        return [self._result(job, wire.chat_from_json(body))]

    async def send(self, client: GigaChatClient, batch: Batch) -> Sequence[JobOutcome]:
        (job,) = batch.jobs
        return [self._result(job, await client.chat(self.request_body(batch)))]

    def _result(self, job: Job, answer: ChatCompletion) -> JobResult:
        row = {
            "shouted": answer.content.upper(),
            "model": answer.model,
            "prompt_tokens": answer.usage.prompt_tokens,
            "completion_tokens": answer.usage.completion_tokens,
            "precached_prompt_tokens": answer.usage.precached_prompt_tokens,
            "metadata": json_text(None),
        }
        return JobResult(job=job, row=row, usage=answer.usage, model=answer.model)

    def result_schema(self) -> pa.Schema:
        return pa.schema(
            [
                pa.field("id", pa.string(), nullable=False),
                pa.field("shouted", pa.string()),
                pa.field("model", pa.string()),
                pa.field("prompt_tokens", pa.int64()),
                pa.field("completion_tokens", pa.int64()),
                pa.field("precached_prompt_tokens", pa.int64()),
                pa.field("latency_ms", pa.float64()),
                pa.field("attempts", pa.int32()),
                pa.field("metadata", pa.string()),
            ]
        )

    def billed_input(self, job: Job, *, message_overhead: int | None = None) -> BilledInput:
        per_message = OVERHEAD_PER_MESSAGE if message_overhead is None else message_overhead
        return BilledInput(
            model=self.model,
            texts=(INSTRUCTION, job.request["text"]),
            overhead=2 * per_message,
            messages=2,
            output_bound=ANSWER_CAP,
        )


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    with serve_emulator(profile("fast", answer_tokens_min=5, answer_tokens_max=40)) as emu:
        yield emu


@pytest.fixture()
def jobs(tmp_path: Path) -> Path:
    path = tmp_path / "texts.jsonl"
    lines = [{"id": f"t{n}", "text": f"quiet words number {n}"} for n in range(6)]
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return path


def _api_args(emu: RunningEmulator) -> list[str]:
    return [
        "--base-url",
        emu.base_url,
        "--auth-url",
        emu.auth_url,
        "--credentials",
        emu.credentials,
        "--scope",
        emu.scope,
    ]


def test_the_registered_kind_is_a_kind_choice_by_name_and_alias() -> None:
    assert {"chat", "embed", "shout", "caps"} <= set(kind_names())
    assert isinstance(kind_for("caps"), ShoutKind)
    assert "--text-column" in {option.flag for option in cli_options()}


def test_request_body_and_outcomes_turn_a_job_into_a_request_and_back() -> None:
    kind = ShoutKind()
    job = kind.job_from_record({"id": "a", "text": "hi"}, SourceLocation("f", 1))
    batch = Batch(jobs=[job])
    assert kind.request_body(batch)["messages"][1] == {"role": "user", "content": "hi"}
    body = {
        "model": "GigaChat:1",
        "choices": [{"message": {"content": "hi there"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2},
    }
    (outcome,) = kind.outcomes(batch, body)
    assert isinstance(outcome, JobResult)
    assert outcome.row["shouted"] == "HI THERE"
    assert outcome.usage == Usage(9, 2)


def test_the_engine_runs_and_estimates_a_kind_it_does_not_know(
    emulator: RunningEmulator, jobs: Path, tmp_path: Path
) -> None:
    config = RunConfig(
        jobs_path=jobs,
        out_dir=tmp_path / "out",
        kind=kind_for("shout"),
        client_settings=ClientSettings.from_env(emulator.client_env()),
        progress="off",
        handle_signals=False,
    )
    summary = anyio.run(run_jobs, config)
    assert summary.status == "completed", summary.message
    table = ds.dataset(tmp_path / "out" / "results").to_table()
    assert sorted(table.column("id").to_pylist()) == [f"t{n}" for n in range(6)]
    assert all(text == text.upper() for text in table.column("shouted").to_pylist())
    billed = sum(table.column("prompt_tokens").to_pylist())

    estimate = estimate_jobs(
        EstimateRequest(
            jobs_path=jobs,
            make_kind=lambda: kind_for("shout"),
            prices=PriceTable.load(),
            client_settings=ClientSettings.from_env(emulator.client_env()),
        )
    )
    assert estimate.kind == "shout"
    assert estimate.rows == 6
    assert estimate.input_tokens == billed  # counted exactly, as the run was billed
    assert estimate.output_tokens.high == 6 * ANSWER_CAP


def test_run_and_estimate_commands_take_the_kind_by_name(
    emulator: RunningEmulator, jobs: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    run = CliRunner().invoke(
        main,
        ["run", str(jobs), "--kind", "shout", "--out", str(out), "--quiet", *_api_args(emulator)],
    )
    assert run.exit_code == 0, run.output
    assert ds.dataset(out / "results").count_rows() == 6

    result = CliRunner().invoke(
        main,
        [
            "estimate",
            str(jobs),
            "--kind",
            "caps",
            "--sample",
            "3",
            "--seed",
            "1",
            "--json",
            "--quiet",
            *_api_args(emulator),
        ],
    )
    assert result.exit_code == 0, result.output
    data = orjson.loads(result.stdout)
    assert data["kind"] == "shout"
    assert data["sample"]["answered"] == 3
    assert data["total"]["output_tokens"]["expected"] is not None


def test_the_engine_names_no_job_kind() -> None:
    forbidden = re.compile(
        r"from jobs\.(chat|embeddings|token_counts)|\b(ChatKind|EmbeddingsKind)\b"
        r"|kind(\.name)? [!=]= \"(chat|embed)\""
    )
    offenders = [
        f"{path.relative_to(ENGINE.parent)}:{n}: {line.strip()}"
        for path in sorted(ENGINE.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if forbidden.search(line)
    ]
    assert offenders == []
