"""`--mode batches` with budgets, batch prices in `gigabatch status`, and `latency_ms`: the
real CLI in a subprocess against the emulator's batch API on loopback."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pyarrow.dataset as ds
import pytest

from batch.api_types import Usage
from batch.pricing import PriceTable
from jobs.base import Batch, SourceLocation
from jobs.registry import kind_for
from tests.test_e2e_batches import batch_emulator, batches_run, server_batches
from tests.test_e2e_run import ids, start

pytestmark = pytest.mark.e2e

JOBS = 60
LINES = 10  # tasks per file: the budget stops between files


def write_jobs(path: Path) -> set[str]:
    with path.open("wb") as out:
        for n in range(JOBS):
            prompt = f"Вопрос номер {n}: " + " ".join(["budget"] * (n % 7 + 2))
            out.write(orjson.dumps({"id": f"q{n}", "prompt": prompt, "max_tokens": 40}) + b"\n")
    return {f"q{n}" for n in range(JOBS)}


def file_ceiling(path: Path) -> int:
    """The billed tokens the first file of `path` (LINES jobs) reserves."""
    kind = kind_for("chat").bounded()
    total = 0
    for n, line in enumerate(path.read_bytes().splitlines()[:LINES]):
        job = kind.job_from_record(orjson.loads(line), SourceLocation(str(path), n + 1))
        ceiling = kind.reserve(Batch([job]))
        total += ceiling.prompt_tokens + ceiling.completion_tokens
    return total


def results(out: Path) -> list[dict[str, Any]]:
    return list(ds.dataset(out / "results").to_table().to_pylist())


def billed(rows: list[dict[str, Any]]) -> int:
    return sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows)


def test_max_tokens_stops_between_files_within_the_budget_and_a_resume_finishes(
    tmp_path: Path,
) -> None:
    expected = write_jobs(tmp_path / "jobs.jsonl")
    out = tmp_path / "out"
    limit = int(file_ceiling(tmp_path / "jobs.jsonl") * 2.5)
    lines = ("--batch-lines", str(LINES))
    with batch_emulator() as emu:
        code, err = batches_run(emu, tmp_path / "jobs.jsonl", out, *lines,
                                "--max-tokens", str(limit))
        assert code == 4, err
        assert "budget reached" in err
        first = results(out)
        assert 0 < len(first) < JOBS
        assert billed(first) <= limit
        code, err = batches_run(emu, tmp_path / "jobs.jsonl", out, *lines,
                                "--max-tokens", str(limit * 100))
        assert code == 0, err
        on_server = server_batches(emu)
    assert Counter(ids(out, "results")) == Counter(expected)
    # Nothing was submitted twice across the budget stop.
    assert sum(b["request_counts"]["total"] for b in on_server) == JOBS


def test_max_cost_is_never_crossed_at_the_batch_prices(tmp_path: Path) -> None:
    write_jobs(tmp_path / "jobs.jsonl")
    prices = {"chat": {"GigaChat": 1000}, "embeddings": {"Embeddings": 40},
              "batch": {"GigaChat": 500}}
    (tmp_path / "prices.json").write_bytes(orjson.dumps(prices))
    table = PriceTable.load(tmp_path / "prices.json").for_batches()
    ceiling_cost = file_ceiling(tmp_path / "jobs.jsonl") * 500 / 1_000_000
    budget = round(ceiling_cost * 2.5, 4)
    out = tmp_path / "out"
    args = ("--batch-lines", str(LINES), "--prices", str(tmp_path / "prices.json"))
    with batch_emulator() as emu:
        code, err = batches_run(emu, tmp_path / "jobs.jsonl", out, *args, "--max-cost", str(budget))
    assert code == 4, err
    rows = results(out)
    cost = sum(table.cost(r["model"], Usage(r["prompt_tokens"], r["completion_tokens"]))
               for r in rows)
    assert 0 < cost <= budget


def test_status_prices_a_batch_run_at_the_batch_prices(tmp_path: Path) -> None:
    write_jobs(tmp_path / "jobs.jsonl")
    prices = {"chat": {"GigaChat": 1000}, "embeddings": {"Embeddings": 40},
              "batch": {"GigaChat": 250}, "default_chat": 1000}
    (tmp_path / "prices.json").write_bytes(orjson.dumps(prices))
    out = tmp_path / "out"
    with batch_emulator() as emu:
        code, err = batches_run(emu, tmp_path / "jobs.jsonl", out)
        assert code == 0, err
        proc = start(emu, "status", str(out), "--json", "--prices", str(tmp_path / "prices.json"))
        status = json.loads(proc.communicate(timeout=30)[0])
    tokens = billed(results(out))
    assert status["cost"] == pytest.approx(tokens * 250 / 1_000_000)


def test_latency_ms_is_the_time_from_submission_to_collection(tmp_path: Path) -> None:
    write_jobs(tmp_path / "jobs.jsonl")
    out = tmp_path / "out"
    with batch_emulator(batch_processing_s=0.5) as emu:
        started = time.monotonic()
        code, err = batches_run(emu, tmp_path / "jobs.jsonl", out)
        elapsed_ms = (time.monotonic() - started) * 1000
    assert code == 0, err
    latencies = {r["latency_ms"] for r in results(out)}
    # One batch, collected once: every row has the same time, past the processing time.
    assert len(latencies) == 1
    [latency] = latencies
    assert 500 <= latency < elapsed_ms

