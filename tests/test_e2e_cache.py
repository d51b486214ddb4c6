"""Runs that reuse answers, end to end: the real CLI in subprocesses against the emulator,
with the answer cache in each test's own directory (tests/conftest.py)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest

from batch.cache import recall_limit
from batch.cache.store import AnswerStore
from batch.emulator import RunningEmulator, profile, serve_emulator
from batch.emulator.content import embedding
from batch.eventlog import ATTEMPT, read_events

pytestmark = pytest.mark.e2e

FAST = {"latency_base_ms": 3.0, "latency_per_prompt_token_ms": 0.0, "seed": 3}
FAST_CHAT = {
    **FAST,
    "latency_per_completion_token_ms": 0.05,
    "answer_tokens_min": 2,
    "answer_tokens_max": 6,
}


def start(emu: RunningEmulator, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIGACHAT_")}
    env.update(emu.client_env())
    return subprocess.Popen(
        [sys.executable, "-c", "from batch.cli import main; main()", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def gigabatch(emu: RunningEmulator, *args: str, timeout: float = 120) -> tuple[int, str]:
    proc = start(emu, *args)
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def started(proc: subprocess.Popen[str], out: Path, timeout: float = 60) -> None:
    """Wait until the run has opened its output (the interpreter and the input check took
    their time)."""
    deadline = time.monotonic() + timeout
    while not (out / "events.bin").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the run did not start"
        time.sleep(0.05)


def write_texts(path: Path, texts: dict[str, str]) -> None:
    with path.open("w") as f:
        for job_id, text in texts.items():
            f.write(json.dumps({"id": job_id, "text": text}) + "\n")


def corpus(n: int, night: int = 1) -> dict[str, str]:
    return {f"doc{i}": f"document {i} of the corpus, night {night} text" for i in range(n)}


def rows(out: Path, *columns: str) -> list[dict[str, Any]]:
    parts = sorted((out / "results").glob("part-*.parquet"))
    return ds.dataset(parts).to_table(columns=list(columns)).to_pylist() if parts else []


def billed_embedding_tokens(emu: RunningEmulator) -> int:
    return int(emu.stats(arrivals=False)["tokens"]["embedding"])


def summary(out: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((out / "summary.json").read_text())
    return loaded


def right_vector(text: str, vector: list[float]) -> bool:
    return array("f", vector) == array("f", embedding(text, "Embeddings", 1024))


@pytest.fixture
def emulator() -> Any:
    with serve_emulator(profile("b2b", stream_limit=8, **FAST)) as emu:
        yield emu


def test_night_two_into_a_new_out_pays_only_for_new_and_changed_texts(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    night1 = corpus(300)
    write_texts(tmp_path / "night1.jsonl", night1)
    code, err = gigabatch(
        emulator,
        "run",
        str(tmp_path / "night1.jsonl"),
        "--kind",
        "embed",
        "--out",
        str(tmp_path / "out1"),
    )
    assert code == 0, err
    night2 = dict(night1)
    for i in range(0, 10):
        del night2[f"doc{i}"]  # removed
    for i in range(10, 16):
        night2[f"doc{i}"] = f"document {i}, edited on night two"  # changed
    for i in range(300, 320):
        night2[f"doc{i}"] = f"a new document {i}"  # new
    delta = {k: night2[k] for k in [f"doc{i}" for i in (*range(10, 16), *range(300, 320))]}
    write_texts(tmp_path / "night2.jsonl", night2)
    emulator.reset_stats()
    code, err = gigabatch(
        emulator,
        "run",
        str(tmp_path / "night2.jsonl"),
        "--kind",
        "embed",
        "--out",
        str(tmp_path / "out2"),
    )
    assert code == 0, err
    billed = billed_embedding_tokens(emulator)
    got = rows(tmp_path / "out2", "id", "embedding", "cached", "prompt_tokens")
    assert sorted(r["id"] for r in got) == sorted(night2)
    assert all(right_vector(night2[r["id"]], r["embedding"]) for r in got)
    assert {r["id"] for r in got if not r["cached"]} == set(delta)
    assert billed == sum(r["prompt_tokens"] for r in got if not r["cached"])
    jobs = summary(tmp_path / "out2")["jobs"]["this_run"]
    assert (jobs["from_cache"], jobs["sent"]) == (len(night2) - len(delta), len(delta))
    assert summary(tmp_path / "out2")["tokens"]["embed"]["prompt"] == billed
    assert "from cache" in err and f"{len(delta)} sent" in err


def test_changed_since_writes_new_and_changed_rows_and_the_removed_ids(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    night1 = corpus(60)
    write_texts(tmp_path / "n1.jsonl", night1)
    assert (
        gigabatch(
            emulator,
            "run",
            str(tmp_path / "n1.jsonl"),
            "--kind",
            "embed",
            "--out",
            str(tmp_path / "out1"),
        )[0]
        == 0
    )
    night2 = {k: v for k, v in night1.items() if k not in {"doc0", "doc1"}}
    night2["doc5"] = "doc five, rewritten"
    night2["doc100"] = "a brand new doc"
    write_texts(tmp_path / "n2.jsonl", night2)
    code, err = gigabatch(
        emulator,
        "run",
        str(tmp_path / "n2.jsonl"),
        "--kind",
        "embed",
        "--out",
        str(tmp_path / "out2"),
        "--changed-since",
        str(tmp_path / "out1"),
    )
    assert code == 0, err
    got = rows(tmp_path / "out2", "id", "embedding")
    assert sorted(r["id"] for r in got) == ["doc100", "doc5"]
    assert all(right_vector(night2[r["id"]], r["embedding"]) for r in got)
    removed = ds.dataset(tmp_path / "out2" / "removed").to_table().column("id").to_pylist()
    assert sorted(removed) == ["doc0", "doc1"]
    assert summary(tmp_path / "out2")["jobs"]["remaining"] == 0


def test_two_concurrent_runs_share_one_cache(emulator: RunningEmulator, tmp_path: Path) -> None:
    texts = corpus(400)
    write_texts(tmp_path / "jobs.jsonl", texts)
    procs = [
        start(
            emulator,
            "run",
            str(tmp_path / "jobs.jsonl"),
            "--kind",
            "embed",
            "--batch-size",
            "8",
            "--out",
            str(tmp_path / f"out{n}"),
        )
        for n in (1, 2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    for n in (1, 2):
        got = rows(tmp_path / f"out{n}", "id", "embedding")
        assert sorted(r["id"] for r in got) == sorted(texts)
        assert all(right_vector(texts[r["id"]], r["embedding"]) for r in got)
    with AnswerStore(Path(os.environ["GIGABATCH_CACHE_DIR"])) as store:
        assert store.info().entries == len(texts)


def test_kill_9_during_cache_writes_then_resume_re_pays_only_requests_in_flight(
    tmp_path: Path,
) -> None:
    texts = corpus(3000)
    write_texts(tmp_path / "jobs.jsonl", texts)
    slow = {**FAST, "latency_base_ms": 40.0}
    with serve_emulator(profile("b2b", stream_limit=8, **slow)) as emu:
        args = (
            "run",
            str(tmp_path / "jobs.jsonl"),
            "--kind",
            "embed",
            "--batch-size",
            "16",
            "--max-concurrency",
            "8",
            "--out",
            str(tmp_path / "out"),
        )
        rng = random.Random(5)
        for _ in range(4):
            proc = start(emu, *args)
            started(proc, tmp_path / "out")
            time.sleep(rng.uniform(0.3, 1.0))
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
        code, err = gigabatch(emu, *args)
        assert code == 0, err
        killed_runs = billed_embedding_tokens(emu)
        emu.reset_stats()
        clean = tmp_path / "clean"
        code, err = gigabatch(emu, *args[:-1], str(clean), "--no-cache")
        assert code == 0, err
        clean_run = billed_embedding_tokens(emu)
    got = rows(tmp_path / "out", "id", "embedding")
    assert Counter(r["id"] for r in got) == Counter(texts.keys())
    assert all(right_vector(texts[r["id"]], r["embedding"]) for r in got)
    # Paid twice per kill: the requests in flight (8 x 16 texts) and the answers of the
    # last ~100 ms not yet committed (8 streams / 40 ms answers: 20 requests), no more.
    per_text = clean_run / len(texts)
    assert killed_runs - clean_run <= 4 * (8 + 20) * 16 * per_text
    with AnswerStore(Path(os.environ["GIGABATCH_CACHE_DIR"])) as store:
        assert store.info().entries == len(texts)


def chat_jobs(path: Path, n: int) -> None:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"q{i}", "prompt": f"question number {i}"}) + "\n")


def chat_requests(emu: RunningEmulator) -> int:
    """Chat requests answered (and billed): 429s are free and not counted."""
    requests = emu.stats(arrivals=False)["requests"].get("/api/v1/chat/completions", {})
    return int(requests.get("200", 0))


def test_chat_answers_are_reused_only_with_cache(tmp_path: Path) -> None:
    chat_jobs(tmp_path / "chat.jsonl", 30)
    with serve_emulator(profile("b2b", stream_limit=8, **FAST_CHAT)) as emu:

        def run(out: str, *extra: str) -> int:
            emu.reset_stats()
            code, err = gigabatch(
                emu, "run", str(tmp_path / "chat.jsonl"), "--out", str(tmp_path / out), *extra
            )
            assert code == 0, err
            return chat_requests(emu)

        assert run("plain1") == 30
        assert run("plain2") == 30  # no --cache: every answer is asked for again
        assert run("cached1", "--cache") == 30
        assert run("cached2", "--cache") == 0
    first = {r["id"]: r["content"] for r in rows(tmp_path / "cached1", "id", "content")}
    again = rows(tmp_path / "cached2", "id", "content", "cached")
    assert {r["id"]: r["content"] for r in again} == first
    assert all(r["cached"] for r in again)
    assert summary(tmp_path / "cached2")["tokens"]["chat"]["total"] == 0


def test_uncached_chat_resumes_from_its_journal_after_kill_9(tmp_path: Path) -> None:
    chat_jobs(tmp_path / "chat.jsonl", 400)
    slow = {**FAST_CHAT, "latency_base_ms": 60.0}
    out = tmp_path / "out"
    with serve_emulator(profile("b2b", stream_limit=8, **slow)) as emu:
        args = (
            "run",
            str(tmp_path / "chat.jsonl"),
            "--max-concurrency",
            "8",
            "--flush-interval",
            "30",
            "--out",
            str(out),
        )
        proc = start(emu, *args)
        started(proc, out)
        time.sleep(1.5)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        assert (out / "journal.sqlite3").exists()
        code, err = gigabatch(emu, *args)
        assert code == 0, err
        sent = chat_requests(emu)
    this_run = summary(out)["jobs"]["this_run"]
    assert this_run["from_journal"] > 0
    # No part was committed before the kill (30 s flush): the journal alone kept the answers.
    # Paid twice: the 8 in flight and those of the last commit window, ~100 ms (8 streams /
    # 60 ms: 14); two windows allowed, as a loaded machine stretches one. Without the journal
    # all the answers before the kill would be paid again.
    assert sent <= 400 + 8 + 2 * 14
    assert Counter(r["id"] for r in rows(out, "id")) == Counter(f"q{i}" for i in range(400))
    assert not (out / "journal.sqlite3").exists()


def test_the_next_run_starts_at_the_remembered_stream_limit(tmp_path: Path) -> None:
    write_texts(tmp_path / "a.jsonl", corpus(1200, night=1))
    write_texts(tmp_path / "b.jsonl", corpus(600, night=2))
    slow = {**FAST, "latency_base_ms": 30.0}
    with serve_emulator(profile("b2b", stream_limit=5, **slow)) as emu:
        common = ("--kind", "embed", "--batch-size", "4", "--max-concurrency", "16")
        code, err = gigabatch(
            emu, "run", str(tmp_path / "a.jsonl"), *common, "--out", str(tmp_path / "a")
        )
        assert code == 0, err
        remembered = recall_limit(
            Path(os.environ["GIGABATCH_CACHE_DIR"]),
            emu.base_url,
            "GIGACHAT_API_B2B",
            "Embeddings",
        )
        assert remembered is not None and remembered.stream_limit == 5
        emu.reset_stats()
        code, err = gigabatch(
            emu, "run", str(tmp_path / "b.jsonl"), *common, "--out", str(tmp_path / "b")
        )
        assert code == 0, err
        assert emu.stats(arrivals=False)["rate_limited"] == 0
    attempts = [e for e in read_events(tmp_path / "b") if e.kind == ATTEMPT]
    assert attempts and all(e.limit == 5 for e in attempts[:10])
    assert max(e.in_flight for e in attempts[:10]) >= 4


def test_cache_prune_makes_the_next_run_pay_again(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    write_texts(tmp_path / "jobs.jsonl", corpus(50))
    base = ("run", str(tmp_path / "jobs.jsonl"), "--kind", "embed")
    assert gigabatch(emulator, *base, "--out", str(tmp_path / "o1"))[0] == 0
    code, err = gigabatch(emulator, "cache", "prune", "--older-than", "0s")
    assert code == 0, err
    emulator.reset_stats()
    assert gigabatch(emulator, *base, "--out", str(tmp_path / "o2"))[0] == 0
    assert summary(tmp_path / "o2")["jobs"]["this_run"]["from_cache"] == 0
    assert billed_embedding_tokens(emulator) > 0


def test_estimate_prices_only_what_the_cache_does_not_answer(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    texts = corpus(40)
    write_texts(tmp_path / "old.jsonl", texts)
    assert (
        gigabatch(
            emulator,
            "run",
            str(tmp_path / "old.jsonl"),
            "--kind",
            "embed",
            "--out",
            str(tmp_path / "o1"),
        )[0]
        == 0
    )
    texts.update({f"new{i}": f"a text not seen before {i}" for i in range(10)})
    write_texts(tmp_path / "new.jsonl", texts)
    proc = start(emulator, "estimate", str(tmp_path / "new.jsonl"), "--kind", "embed", "--json")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    estimate = json.loads(out)
    assert (estimate["cached_rows"], estimate["total"]["rows"]) == (40, 10)
