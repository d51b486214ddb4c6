"""`gigabatch estimate` end to end against the emulator over loopback: exact input tokens,
a sampling interval that holds the truth, sampled answers reused by the run, offline mode,
price override, balance; and budgets on runs."""

from __future__ import annotations

import base64
import os
import random
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import orjson
import pyarrow.dataset as ds
import pytest
from click.testing import CliRunner, Result

from batch.cli import main
from batch.emulator import RunningEmulator, profile, serve_emulator
from batch.run_config import RunConfig
from batch.runner import run_jobs
from batch.settings import ClientSettings
from jobs.chat import ChatOptions
from jobs.registry import kind_for

CHAT_PATH = "/api/v1/chat/completions"
WORDS = ["данные", "модель", "ответ", "поток", "batch", "model", "answer,", "(price)", "budget."]


def _text(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def write_chat_jobs(
    path: Path, count: int, *, seed: int = 7, max_tokens: int | None = None
) -> Path:
    rng = random.Random(seed)
    with path.open("wb") as out:
        for n in range(count):
            line: dict[str, Any] = {"id": f"c{n}", "prompt": _text(rng, 5, 60)}
            if max_tokens is not None:
                line["max_tokens"] = max_tokens
            out.write(orjson.dumps(line) + b"\n")
    return path


def write_embedding_jobs(path: Path, count: int, *, seed: int = 7) -> Path:
    rng = random.Random(seed)
    texts: list[str] = []
    with path.open("wb") as out:
        for n in range(count):
            # Every fifth text repeats the one before, within one request (the run packs 64
            # texts per request), so the run embeds and bills it once.
            repeat = n % 5 == 4 and n % 64 != 0
            texts.append(texts[n - 1] if repeat else f"text {n} {_text(rng, 3, 40)}")
            out.write(orjson.dumps({"id": f"e{n}", "text": texts[n]}) + b"\n")
    return path


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    # Answer lengths spread widely, so the sampling interval has something to estimate.
    config = profile("fast", answer_tokens_min=10, answer_tokens_max=400, seed=5)
    with serve_emulator(config) as emu:
        yield emu


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("GIGACHAT_"):
            monkeypatch.delenv(name)


def api_args(emu: RunningEmulator) -> list[str]:
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



def estimate(args: list[str]) -> Result:
    return CliRunner().invoke(main, ["estimate", "--quiet", *args], catch_exceptions=False)


def estimate_json(args: list[str]) -> dict[str, Any]:
    result = estimate([*args, "--json"])
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = orjson.loads(result.stdout)
    return data


def run_all(emu: RunningEmulator, jobs: Path, out: Path, kind: str = "chat") -> dict[str, int]:
    """Run the whole file through the engine; the usage it was billed."""
    config = RunConfig(
        jobs_path=jobs,
        out_dir=out,
        kind=kind_for(kind),
        client_settings=ClientSettings.from_env(emu.client_env()),
        progress="off",
        handle_signals=False,
    )
    summary = anyio.run(run_jobs, config)
    assert summary.status == "completed", summary.message
    table = ds.dataset(out / "results").to_table()
    return {
        "rows": table.num_rows,
        "prompt": sum(table.column("prompt_tokens").to_pylist()),
        "completion": sum(table.column("completion_tokens").to_pylist())
        if "completion_tokens" in table.column_names
        else 0,
    }


def chat_requests(emu: RunningEmulator) -> int:
    by_status: Mapping[str, int] = emu.stats(arrivals=False)["requests"].get(CHAT_PATH, {})
    return by_status.get("200", 0)


def test_chat_input_tokens_equal_the_prompt_tokens_the_run_is_billed(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    jobs = write_chat_jobs(tmp_path / "chat.jsonl", 120, seed=11)
    data = estimate_json([str(jobs), *api_args(emulator)])
    billed = run_all(emulator, jobs, tmp_path / "out")
    assert data["mode"] == "exact"
    assert data["total"]["input_tokens"] == billed["prompt"]


def test_cacheable_input_equals_what_the_emulator_serves_from_its_prompt_cache(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    jobs = write_chat_jobs(tmp_path / "chat.jsonl", 80, seed=12)
    system = "Отвечай кратко и по делу, на языке вопроса."
    data = estimate_json([str(jobs), "--system", system, *api_args(emulator)])
    emulator.reset_stats()
    config = RunConfig(
        jobs_path=jobs,
        out_dir=tmp_path / "out",
        kind=kind_for("chat", ChatOptions(system=system)),
        client_settings=ClientSettings.from_env(emulator.client_env()),
        progress="off",
        handle_signals=False,
    )
    assert anyio.run(run_jobs, config).status == "completed"
    served = emulator.stats(arrivals=False)["tokens"]
    assert data["total"]["input_tokens"] == served["prompt"] + served["precached"]
    assert data["total"]["cacheable_input_tokens"] == served["precached"]


def test_embedding_input_tokens_equal_the_usage_the_run_is_billed(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    jobs = write_embedding_jobs(tmp_path / "texts.jsonl", 150, seed=3)
    data = estimate_json([str(jobs), "--kind", "embed", *api_args(emulator)])
    emulator.reset_stats()
    run_all(emulator, jobs, tmp_path / "out", kind="embed")
    # Repeated texts are embedded once, so the server's bill is the truth, not the rows.
    assert data["total"]["input_tokens"] == emulator.stats()["tokens"]["embedding"]
    assert data["total"]["output_tokens"] == {"low": 0, "expected": 0, "high": 0}


def test_sampling_interval_contains_the_true_output_tokens_on_a_seeded_run(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    jobs = write_chat_jobs(tmp_path / "chat.jsonl", 400, seed=21)
    data = estimate_json(
        [
            str(jobs),
            "--sample",
            "40",
            "--seed",
            "4",
            "--out",
            str(tmp_path / "out"),
            *api_args(emulator),
        ]
    )
    truth = run_all(emulator, jobs, tmp_path / "out")["completion"]
    output = data["total"]["output_tokens"]
    assert output["low"] <= truth <= output["high"]
    assert output["high"] - output["low"] < 0.5 * truth  # informative, not just wide
    assert data["sample"]["answered"] == 40


def test_sampled_answers_are_not_paid_for_again_by_the_run(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    jobs = write_chat_jobs(tmp_path / "chat.jsonl", 60, seed=8)
    out = tmp_path / "out"
    estimate_json(
        [str(jobs), "--sample", "15", "--seed", "1", "--out", str(out), *api_args(emulator)]
    )
    before = chat_requests(emulator)
    billed = run_all(emulator, jobs, out)
    assert chat_requests(emulator) - before == 60 - 15
    assert billed["rows"] == 60


def test_offline_estimate_is_labelled_and_sends_nothing(
    emulator: RunningEmulator, tmp_path: Path, clean_env: None
) -> None:
    jobs = write_chat_jobs(tmp_path / "chat.jsonl", 30, seed=2)
    emulator.reset_stats()
    result = estimate([str(jobs), "--offline", "--base-url", emulator.base_url])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("OFFLINE APPROXIMATION")
    assert "input tokens ~" in result.stdout
    assert emulator.stats(arrivals=False)["requests"] == {}
    data = estimate_json([str(jobs), "--offline"])
    assert data["mode"] == "offline-approximation"


def test_offline_refuses_to_sample(tmp_path: Path, clean_env: None) -> None:
    jobs = write_chat_jobs(tmp_path / "chat.jsonl", 5)
    result = estimate([str(jobs), "--offline", "--sample", "2"])
    assert result.exit_code == 2
    assert "--offline" in result.stderr


def test_price_table_override_reprices_the_estimate(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    jobs = write_chat_jobs(tmp_path / "chat.jsonl", 20, seed=4, max_tokens=50)
    prices = tmp_path / "prices.json"
    prices.write_bytes(orjson.dumps({"taken": "2030-01-01", "chat": {"GigaChat": 1000}}))
    data = estimate_json([str(jobs), "--prices", str(prices), *api_args(emulator)])
    total = data["total"]
    assert data["prices"]["taken"] == "2030-01-01"
    assert total["cost"]["low"] == pytest.approx(total["input_tokens"] * 1000 / 1e6)
    assert total["cost"]["high"] == pytest.approx((total["input_tokens"] + 20 * 50) * 1000 / 1e6)


def test_balance_is_shown_and_a_warning_given_when_the_estimate_exceeds_it(
    tmp_path: Path,
) -> None:
    jobs = write_chat_jobs(tmp_path / "chat.jsonl", 20, seed=4)
    with serve_emulator(profile("fast", balance_tokens=500)) as emu:
        result = estimate([str(jobs), *api_args(emu)])
    assert result.exit_code == 0, result.output
    assert "balance: GigaChat 500 tokens" in result.stdout
    assert "WARNING: the estimate for GigaChat" in result.stdout
    assert "exceeds the balance (500 tokens)" in result.stderr


def test_balance_unavailable_on_a_non_prepaid_account_is_not_an_error(tmp_path: Path) -> None:
    jobs = write_chat_jobs(tmp_path / "chat.jsonl", 5, seed=4)
    with serve_emulator(profile("fast", balance_tokens=None)) as emu:
        result = estimate([str(jobs), *api_args(emu)])
    assert result.exit_code == 0, result.output
    assert "balance: unavailable (HTTP 403: not a prepaid account" in result.stdout


def test_invalid_job_file_is_refused_before_any_request(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    jobs = tmp_path / "bad.jsonl"
    jobs.write_text('{"id": "a", "prompt": "hi"}\n{"id": "b"}\n')
    result = estimate([str(jobs), *api_args(emulator)])
    assert result.exit_code == 2
    assert "line 2" in result.stderr


def test_missing_credentials_name_the_variables_and_offer_offline(
    tmp_path: Path, clean_env: None
) -> None:
    jobs = write_chat_jobs(tmp_path / "chat.jsonl", 5)
    result = estimate([str(jobs)])
    assert result.exit_code == 2
    assert "GIGACHAT_CREDENTIALS" in result.stderr and "--offline" in result.stderr


def test_out_without_sample_is_refused(tmp_path: Path, clean_env: None) -> None:
    jobs = write_chat_jobs(tmp_path / "chat.jsonl", 5)
    result = estimate([str(jobs), "--offline", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "--sample" in result.stderr


def test_out_as_a_uri_is_refused_not_folded_into_a_local_directory(
    tmp_path: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    jobs = write_chat_jobs(tmp_path / "chat.jsonl", 5)
    result = estimate([str(jobs), "--sample", "2", "--out", "s3://KEY:SECRET@bucket/run"])
    assert result.exit_code == 2
    assert "s3://bucket/run" in result.stderr and "local directory" in result.stderr
    assert "SECRET" not in result.output + result.stderr
    assert not (tmp_path / "s3:").exists()


def test_out_naming_a_file_is_refused(tmp_path: Path, clean_env: None) -> None:
    jobs = write_chat_jobs(tmp_path / "chat.jsonl", 5)
    result = estimate([str(jobs), "--sample", "2", "--out", str(jobs)])
    assert result.exit_code == 2
    assert "is a file, not a directory" in result.stderr


def test_offline_estimate_honours_gigachat_model(
    tmp_path: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GIGACHAT_MODEL", "GigaChat-Max")
    jobs = write_chat_jobs(tmp_path / "chat.jsonl", 3)
    data = estimate_json([str(jobs), "--offline"])
    assert [m["model"] for m in data["models"]] == ["GigaChat-Max"]


def test_embedding_texts_over_the_input_limit_are_left_out_as_the_run_fails_them(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    jobs = tmp_path / "texts.jsonl"
    with jobs.open("wb") as out:
        for n in range(30):
            # Every tenth text is 600 tokens long: over the 512 the Embeddings model takes.
            text = "long " * 600 if n % 10 == 0 else f"short text number {n}"
            out.write(orjson.dumps({"id": f"t{n}", "text": text + str(n)}) + b"\n")
    result = estimate([str(jobs), "--kind", "embed", *api_args(emulator)])
    assert "3 texts exceed the model's input limit" in result.stdout
    data = estimate_json([str(jobs), "--kind", "embed", *api_args(emulator)])
    emulator.reset_stats()
    config = RunConfig(
        jobs_path=jobs,
        out_dir=tmp_path / "out",
        kind=kind_for("embed"),
        client_settings=ClientSettings.from_env(emulator.client_env()),
        progress="off",
        handle_signals=False,
    )
    assert anyio.run(run_jobs, config).status == "failed_rows"
    assert data["total"]["input_tokens"] == emulator.stats()["tokens"]["embedding"]


def test_counting_under_a_429_storm_waits_out_retry_after_and_stays_exact(
    tmp_path: Path,
) -> None:
    jobs = write_chat_jobs(tmp_path / "chat.jsonl", 3000, seed=5)
    config = profile(
        "b2b",
        stream_limit=4,
        fault_storm=0.1,
        storm_s=0.3,
        retry_after="seconds",
        latency_base_ms=3.0,
        seed=3,
    )
    with serve_emulator(config) as emu:
        data = estimate_json([str(jobs), *api_args(emu)])
        stats = emu.stats()
    with serve_emulator(profile("fast")) as calm:
        truth = estimate_json([str(jobs), *api_args(calm)])
    assert data["total"]["input_tokens"] == truth["total"]["input_tokens"]
    windows = stats["retry_after_windows"]
    assert stats["requests"]["/api/v1/tokens/count"].get("429", 0) > 0, "no storm hit counting"
    # Requests already on their way when a window opened may land in its first moments.
    inside = [
        a
        for a in stats["arrivals"]
        for w in windows
        if w["start"] + 0.05 < a["t"] < w["end"] and a["path"] == "/api/v1/tokens/count"
    ]
    assert inside == []


def test_rejected_credentials_are_one_line_and_exit_1(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    jobs = write_chat_jobs(tmp_path / "chat.jsonl", 5)
    wrong = base64.b64encode(b"someone:wrong").decode()
    args = [
        str(jobs),
        "--base-url",
        emulator.base_url,
        "--auth-url",
        emulator.auth_url,
        "--credentials",
        wrong,
        "--scope",
        emulator.scope,
    ]
    result = estimate(args)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: HTTP 401")
    assert "Traceback" not in result.stderr and wrong not in result.stderr


def test_a_wrong_message_overhead_is_corrected_from_the_sampled_answers(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    # As if the real API's overhead were unknown: assume none, let the sample measure it.
    jobs = write_chat_jobs(tmp_path / "chat.jsonl", 100, seed=30)
    data = estimate_json(
        [str(jobs), "--message-overhead", "0", "--sample", "10", "--seed", "2", *api_args(emulator)]
    )
    billed = run_all(emulator, jobs, tmp_path / "out")
    assert data["calibration"]["measured_overhead"] == 3
    assert data["total"]["input_tokens"] == billed["prompt"]


def test_the_sample_confirms_the_assumed_overhead_on_the_emulator(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    jobs = write_chat_jobs(tmp_path / "chat.jsonl", 30, seed=31)
    result = estimate([str(jobs), "--sample", "5", "--seed", "1", *api_args(emulator)])
    assert "calibration: the 5 sampled jobs were billed 3.00 tokens per message" in result.stdout
    assert "as assumed" in result.stdout
