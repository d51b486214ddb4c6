"""`gigabatch run --mode batches` end to end: the real CLI in a subprocess against the
emulator's batch API on loopback (short processing times keep it fast)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pyarrow.dataset as ds
import pytest

from batch.emulator import RunningEmulator, profile, serve_emulator
from tests.test_e2e_run import SAMPLES, chat_jobs, gigabatch, ids, start

pytestmark = pytest.mark.e2e

POLL = ("--poll-interval", "0.05", "--poll-max", "0.2")


def batch_emulator(**knobs: Any) -> Any:
    return serve_emulator(profile("fast", **{"batch_processing_s": 0.3, "seed": 4, **knobs}))


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    with batch_emulator() as emu:
        yield emu


def batches_run(emu: RunningEmulator, jobs: Path, out: Path, *args: str) -> tuple[int, str]:
    return gigabatch(emu, "run", str(jobs), "--out", str(out), "--mode", "batches", *POLL, *args)


def table(out: Path, columns: list[str]) -> dict[str, dict[str, Any]]:
    rows = ds.dataset(out / "results").to_table(columns=columns).to_pylist()
    return {row["id"]: row for row in rows}


def server_batches(emu: RunningEmulator) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {emu.access_token()}"}
    answer = httpx.get(f"{emu.base_url}/batches", headers=headers, trust_env=False).json()
    return list(answer["batches"] if isinstance(answer, dict) else answer)


def journal(out: Path) -> list[tuple[str | None, str, int]]:
    """(id, state, jobs) of every batch the run's journal records, in order."""
    if not (out / "batches.sqlite").exists():
        return []
    db = sqlite3.connect(out / "batches.sqlite")
    try:
        return list(db.execute("select id, state, jobs from batches order by seq"))
    except sqlite3.OperationalError:  # the run has not created its tables yet
        return []
    finally:
        db.close()


def test_chat_via_batches_equals_the_online_answers(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    jobs = SAMPLES / "chat.jsonl"
    code, err = gigabatch(emulator, "run", str(jobs), "--out", str(tmp_path / "online"))
    assert code == 0, err
    code, err = batches_run(emulator, jobs, tmp_path / "batches")
    assert code == 0, err
    columns = ["id", "content", "finish_reason", "model", "completion_tokens", "function_call"]
    online, batched = table(tmp_path / "online", columns), table(tmp_path / "batches", columns)
    assert batched == online
    summary = json.loads((tmp_path / "batches" / "summary.json").read_text())
    assert summary["batches"] == {"created": 1, "collected": 1, "adopted": 0, "waiting": 0}
    assert summary["tokens"]["chat"]["completion"] > 0


def test_embeddings_via_batches_equal_the_online_vectors(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    jobs = SAMPLES / "embeddings.jsonl"
    code, err = gigabatch(
        emulator, "run", str(jobs), "--kind", "embed", "--out", str(tmp_path / "online")
    )
    assert code == 0, err
    code, err = batches_run(emulator, jobs, tmp_path / "batches", "--kind", "embed")
    assert code == 0, err
    columns = ["id", "embedding", "model"]
    online, batched = table(tmp_path / "online", columns), table(tmp_path / "batches", columns)
    assert batched.keys() == online.keys()
    for job_id, row in online.items():
        assert batched[job_id]["embedding"] == pytest.approx(row["embedding"])
        assert batched[job_id]["model"] == row["model"]


def test_more_than_500_jobs_go_in_several_batches(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    expected = chat_jobs(tmp_path / "jobs.jsonl", 1100)
    code, err = batches_run(emulator, tmp_path / "jobs.jsonl", tmp_path / "out")
    assert code == 0, err
    assert Counter(ids(tmp_path / "out", "results")) == Counter(expected)
    recorded = journal(tmp_path / "out")
    assert [jobs for _, _, jobs in recorded] == [500, 500, 100]
    assert {b["id"] for b in server_batches(emulator)} == {i for i, _, _ in recorded}


def test_kill_9_after_batches_are_created_resumes_without_submitting_twice(
    tmp_path: Path,
) -> None:
    expected = chat_jobs(tmp_path / "jobs.jsonl", 1200)
    out = tmp_path / "out"
    args = ("run", str(tmp_path / "jobs.jsonl"), "--out", str(out), "--mode", "batches", *POLL)
    with batch_emulator(batch_processing_s=2.0) as emu:
        proc = start(emu, *args, "--batch-lines", "100")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if len(journal(out)) >= 4:
                break
            time.sleep(0.02)
        proc.kill()
        proc.wait()
        before = journal(out)
        assert 4 <= len(before) < 12
        unsure = sum(jobs for _, state, jobs in before if state == "submitting")
        code, err = gigabatch(emu, *args, "--batch-lines", "100")
        assert code == 0, err
        on_server = server_batches(emu)
    assert Counter(ids(out, "results")) == Counter(expected)
    after = journal(out)
    recorded_ids = [i for i, _, _ in after]
    assert all(state == "collected" for _, state, _ in after)
    # Every batch id recorded before the kill was re-attached, never created again.
    assert {i for i, _, _ in before if i} <= set(recorded_ids)
    assert len(recorded_ids) == len(set(recorded_ids))
    # Every job was submitted once: a file whose answer the kill cut off (`unsure` jobs)
    # was found on the server and adopted, or had not been created and went again.
    assert sum(b["request_counts"]["total"] for b in on_server) == 1200
    assert unsure in {0, 100}


def test_a_bare_array_status_shape_works_too(tmp_path: Path) -> None:
    expected = chat_jobs(tmp_path / "jobs.jsonl", 30)
    with batch_emulator(batch_list_shape="array") as emu:
        code, err = batches_run(emu, tmp_path / "jobs.jsonl", tmp_path / "out")
    assert code == 0, err
    assert set(ids(tmp_path / "out", "results")) == expected


@pytest.mark.parametrize("lines", ["500", "10"], ids=["one-batch-by-id", "three-by-list"])
def test_429s_on_polling_are_waited_out(tmp_path: Path, lines: str) -> None:
    expected = chat_jobs(tmp_path / "jobs.jsonl", 30)
    with batch_emulator(batch_poll_429_rate=0.7, retry_after="none") as emu:
        code, err = batches_run(
            emu, tmp_path / "jobs.jsonl", tmp_path / "out", "--batch-lines", lines
        )
    assert code == 0, err
    assert set(ids(tmp_path / "out", "results")) == expected
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["rate_limited"] > 0


def test_failed_tasks_become_failed_rows_and_are_re_driven_online(tmp_path: Path) -> None:
    expected = chat_jobs(tmp_path / "jobs.jsonl", 60)
    out = tmp_path / "out"
    with batch_emulator(batch_task_failure_rate=0.3) as emu:
        code, err = batches_run(emu, tmp_path / "jobs.jsonl", out)
        assert code == 3, err
        failed = ds.dataset(out / "failed").to_table().to_pylist()
        assert failed and {(r["error_class"], r["status"]) for r in failed} == {
            ("ServerError", 500)
        }
        code, err = gigabatch(emu, "run", str(tmp_path / "jobs.jsonl"), "--out", str(out),
                              "--retry-failed", "--mode", "online")
    assert code == 0, err
    assert Counter(ids(out, "results")) == Counter(expected)
    assert ids(out, "failed") == []


def test_a_completion_timeout_stops_with_exit_1_and_a_rerun_resumes_the_wait(
    tmp_path: Path,
) -> None:
    expected = chat_jobs(tmp_path / "jobs.jsonl", 20)
    out = tmp_path / "out"
    with batch_emulator(batch_processing_s=1.5) as emu:
        code, err = batches_run(emu, tmp_path / "jobs.jsonl", out, "--completion-timeout", "0.2")
        assert code == 1, err
        assert "not completed within 0.2 s" in err
        code, err = batches_run(emu, tmp_path / "jobs.jsonl", out)
        assert code == 0, err
        assert len(server_batches(emu)) == 1
    assert set(ids(out, "results")) == expected
    assert json.loads((out / "summary.json").read_text())["batches"]["created"] == 0


def test_status_shows_the_recorded_batches(emulator: RunningEmulator, tmp_path: Path) -> None:
    chat_jobs(tmp_path / "jobs.jsonl", 10)
    code, err = batches_run(emulator, tmp_path / "jobs.jsonl", tmp_path / "out")
    assert code == 0, err
    code, _ = gigabatch(emulator, "status", str(tmp_path / "out"))
    assert code == 0
    proc = start(emulator, "status", str(tmp_path / "out"), "--json")
    data = json.loads(proc.communicate(timeout=30)[0])
    [batch] = data["batches"]
    assert (batch["state"], batch["server_status"], batch["jobs"]) == ("collected", "completed", 10)


def test_an_online_run_refuses_while_batches_wait(tmp_path: Path) -> None:
    chat_jobs(tmp_path / "jobs.jsonl", 10)
    out = tmp_path / "out"
    with batch_emulator(batch_processing_s=30) as emu:
        code, _ = batches_run(emu, tmp_path / "jobs.jsonl", out, "--completion-timeout", "0")
        assert code == 1
        code, err = gigabatch(emu, "run", str(tmp_path / "jobs.jsonl"), "--out", str(out))
    assert code == 2
    assert "still waiting on the server" in err


def test_a_batch_whose_id_never_reached_the_journal_is_found_and_adopted(
    tmp_path: Path,
) -> None:
    expected = chat_jobs(tmp_path / "jobs.jsonl", 40)
    out = tmp_path / "out"
    with batch_emulator(batch_processing_s=1.0) as emu:
        code, _ = batches_run(emu, tmp_path / "jobs.jsonl", out, "--completion-timeout", "0")
        assert code == 1
        # As if the run had been killed before the create call's answer reached the disk.
        with sqlite3.connect(out / "batches.sqlite") as db:
            db.execute("update batches set id = null, state = 'submitting'")
        db.close()
        code, err = batches_run(emu, tmp_path / "jobs.jsonl", out)
        assert code == 0, err
        assert len(server_batches(emu)) == 1
    assert Counter(ids(out, "results")) == Counter(expected)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["batches"]["adopted"] == 1
    assert summary["batches"]["created"] == 0


def test_a_batch_past_its_completion_window_fails_its_jobs(tmp_path: Path) -> None:
    expected = chat_jobs(tmp_path / "jobs.jsonl", 10)
    out = tmp_path / "out"
    with batch_emulator(batch_processing_s=30) as emu:
        code, err = batches_run(emu, tmp_path / "jobs.jsonl", out, "--completion-window", "0.3")
    assert code == 3, err
    failed = ds.dataset(out / "failed").to_table().to_pylist()
    assert {row["id"] for row in failed} == expected
    assert {row["error_class"] for row in failed} == {"BatchExpired"}
    assert [state for _, state, _ in journal(out)] == ["collected"]


def test_several_waiting_batches_are_polled_with_one_request_per_round(tmp_path: Path) -> None:
    expected = chat_jobs(tmp_path / "jobs.jsonl", 50)
    out = tmp_path / "out"
    pace = ("--poll-interval", "0.1", "--poll-max", "0.1", "--batch-lines", "10")
    with batch_emulator(batch_processing_s=1.0) as emu:
        code, err = gigabatch(
            emu, "run", str(tmp_path / "jobs.jsonl"), "--out", str(out), "--mode", "batches",
            *pace,
        )
        arrivals = [a["t"] for a in emu.stats()["arrivals"] if a["path"] == "/api/v1/batches"]
    assert code == 0, err
    assert Counter(ids(out, "results")) == Counter(expected)
    # The five files are created first; then each round sends one GET /batches (the list,
    # or by id once one batch waits), never one per batch: rounds start >= 0.08 s apart.
    polls = arrivals[5:]
    assert len(polls) >= 5
    gaps = [b - a for a, b in pairwise(polls)]
    assert min(gaps) >= 0.02  # a request per batch would come ~1 ms apart
