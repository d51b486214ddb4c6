"""What a run reuses, part by part: the cache and the journal as the producer and the
workers meet them (AnswerReuse), --changed-since's comparison (ChangeFilter), and the
remembered stream limit (LimitMemory and the limiter's remembered start)."""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

from batch.api_types import Usage
from batch.cache import recall_limit
from batch.changes import ChangeFilter
from batch.checkpoint import Checkpoint
from batch.errors import CacheUnavailable, ConfigError
from batch.limit_memory import LimitMemory
from batch.limiter import AdaptiveLimiter
from batch.reuse import AnswerReuse, CachedJobs
from batch.writer import Outcomes, rows_to_table
from jobs.base import Job, JobResult, SourceLocation
from jobs.chat import ChatKind
from jobs.embeddings import EmbeddingsKind
from tests.test_limiter import Clock, Request, fill_window


def embed_job(job_id: str, text: str) -> Job:
    return Job(job_id, SourceLocation("t.jsonl", 1), {"model": "Embeddings", "text": text})


def embed_answer(kind: EmbeddingsKind, job: Job, value: float) -> JobResult:
    row = {
        "embedding": array("f", [value] * 1024),
        "prompt_tokens": 7,
        "model": "Embeddings:1",
        "metadata": None,
    }
    return JobResult(job, row, Usage(prompt_tokens=7), "Embeddings:1")


def test_a_kept_embedding_is_a_hit_billed_nothing_in_another_run(tmp_path: Path) -> None:
    kind = EmbeddingsKind()
    first = AnswerReuse.open(kind, tmp_path / "out1", cache_dir=tmp_path / "cache")
    job = embed_job("a", "hello")
    first.keep([embed_answer(kind, job, 0.5)])
    first.close(finished=True)
    second = AnswerReuse.open(kind, tmp_path / "out2", cache_dir=tmp_path / "cache")
    found = second.lookup([embed_job("b", "hello"), embed_job("c", "other")])
    second.close(finished=True)
    assert [r.job.id for r in found.cached] == ["b"] and [j.id for j in found.to_send] == ["c"]
    hit = found.cached[0]
    assert hit.row["embedding"] == array("f", [0.5] * 1024)
    assert hit.row["prompt_tokens"] == 7 and hit.model == "Embeddings:1"


def test_a_changed_text_or_model_misses(tmp_path: Path) -> None:
    kind = EmbeddingsKind()
    reuse = AnswerReuse.open(kind, tmp_path / "out", cache_dir=tmp_path / "cache")
    reuse.keep([embed_answer(kind, embed_job("a", "hello"), 0.5)])
    other_model = Job("m", SourceLocation("t", 1), {"model": "Embeddings-2", "text": "hello"})
    found = reuse.lookup([embed_job("s", "hello "), other_model])
    reuse.close(finished=True)
    assert not found.cached and len(found.to_send) == 2


def chat_job(job_id: str) -> Job:
    body = {"model": "GigaChat", "messages": [{"role": "user", "content": f"hi {job_id}"}]}
    return Job(job_id, SourceLocation("c.jsonl", 1), body, metadata={"k": 1})


def chat_answer(job: Job) -> JobResult:
    row = {
        "content": "hello",
        "finish_reason": "stop",
        "model": "GigaChat:2",
        "prompt_tokens": 5,
        "completion_tokens": 3,
        "precached_prompt_tokens": 1,
        "total_tokens": 8,
        "metadata": '{"k":1}',
        "function_call": None,
    }
    return JobResult(job, row, Usage(5, 3, 1), "GigaChat:2")


def test_uncached_chat_answers_go_to_the_journal_and_come_back_billed(tmp_path: Path) -> None:
    kind = ChatKind()
    first = AnswerReuse.open(kind, tmp_path / "out", cache_dir=None)
    first.keep([chat_answer(chat_job("q1"))])
    first.close(finished=False)  # killed before a part held it
    again = AnswerReuse.open(kind, tmp_path / "out", cache_dir=None)
    found = again.lookup([chat_job("q1"), chat_job("q2")])
    assert [r.job.id for r in found.journalled] == ["q1"] and not found.cached
    replayed = found.journalled[0]
    assert replayed.usage == Usage(5, 3, 1) and replayed.row["content"] == "hello"
    assert replayed.row["metadata"] == '{"k":1}'
    again.close(finished=True)
    assert not (tmp_path / "out" / "journal.sqlite3").exists()


def test_restart_empties_the_journal(tmp_path: Path) -> None:
    kind = ChatKind()
    first = AnswerReuse.open(kind, tmp_path / "out", cache_dir=None)
    first.keep([chat_answer(chat_job("q1"))])
    first.close(finished=False)
    again = AnswerReuse.open(kind, tmp_path / "out", cache_dir=None, restart=True)
    assert not again.active and again.lookup([chat_job("q1")]).to_send
    again.close(finished=True)


def test_cached_jobs_counts_what_the_cache_answers(tmp_path: Path) -> None:
    kind = EmbeddingsKind()
    reuse = AnswerReuse.open(kind, tmp_path / "out", cache_dir=tmp_path / "cache")
    reuse.keep([embed_answer(kind, embed_job(f"a{i}", f"t{i}"), 0.1) for i in range(5)])
    sieve = CachedJobs(reuse, chunk=2)
    misses = list(sieve.misses(embed_job(f"b{i}", f"t{i}") for i in range(8)))
    reuse.close(finished=True)
    assert sieve.answered == 5 and [j.id for j in misses] == ["b5", "b6", "b7"]


def previous_output(tmp_path: Path, rows: list[dict[str, object]]) -> Path:
    kind = EmbeddingsKind()
    out = tmp_path / "prev"
    checkpoint = Checkpoint.open(
        out,
        kind="embed",
        input_path="x",
        input_fingerprint="f",
        settings=kind.answer_settings(),
        total_jobs=len(rows),
    )
    checkpoint.commit(rows_to_table(rows, kind.result_schema()), None, {})
    return out


def vector_row(job_id: str, value: float, metadata: str | None = None) -> dict[str, object]:
    return {
        "id": job_id,
        "embedding": array("f", [value] * 1024),
        "prompt_tokens": 3,
        "model": "Embeddings:1",
        "latency_ms": 1.0,
        "attempts": 1,
        "metadata": metadata,
    }


def test_changed_since_keeps_new_and_changed_rows_and_lists_the_lost_ids(tmp_path: Path) -> None:
    prev = previous_output(
        tmp_path,
        [
            vector_row("same", 1.0),
            vector_row("edited", 2.0),
            vector_row("meta", 3.0),
            vector_row("gone", 4.0),
        ],
    )
    changes = ChangeFilter.open(prev, EmbeddingsKind().result_schema(), "embed")
    for job_id in ("same", "edited", "meta", "new"):
        changes.seen(job_id)
    out = Outcomes(
        results=[
            {**vector_row("same", 1.0), "latency_ms": 9.0, "attempts": 0, "cached": True},
            vector_row("edited", 2.5),
            vector_row("meta", 3.0, '{"tag":1}'),
            vector_row("new", 5.0),
        ]
    )
    assert changes.drop_unchanged(out) == 1
    assert [r["id"] for r in out.results] == ["edited", "meta", "new"]
    changes.write_removed(tmp_path / "out")
    removed = pa.parquet.read_table(tmp_path / "out" / "removed" / "part-00001.parquet")
    assert removed.column("id").to_pylist() == ["gone"]


def test_changed_since_refuses_an_output_of_another_kind(tmp_path: Path) -> None:
    prev = previous_output(tmp_path, [vector_row("a", 1.0)])

    with pytest.raises(ConfigError, match="holds embed jobs, this run is chat"):
        ChangeFilter.open(prev, ChatKind().result_schema(), "chat")


@pytest.fixture
def portal() -> Iterator[BlockingPortal]:
    with start_blocking_portal() as portal:
        yield portal
        portal.call(portal.stop, True)


def test_a_remembered_level_is_where_the_limit_starts_without_slow_start(
    portal: BlockingPortal,
) -> None:
    limiter = AdaptiveLimiter(16, initial=2, remembered=6, clock=Clock())
    assert limiter.limit == 6 and limiter.found_limit
    for _ in range(8):
        fill_window(portal, limiter)
    assert limiter.limit == 6  # no growth until the probe spacing has passed


def test_a_server_whose_limit_dropped_lowers_the_remembered_level_at_once(
    portal: BlockingPortal,
) -> None:
    limiter = AdaptiveLimiter(16, remembered=10, clock=Clock())
    requests = [Request(portal, limiter) for _ in range(10)]
    for request in requests[:4]:
        request.succeed()
    requests[4].refuse(1.0)
    assert limiter.limit < 10


def test_the_limit_is_remembered_only_once_a_429_showed_it(
    tmp_path: Path, portal: BlockingPortal
) -> None:
    memory = LimitMemory.of(tmp_path, "http://127.0.0.1:1/api/v1", "B2B", "Embeddings")
    limiter = AdaptiveLimiter(64, clock=Clock())
    fill_window(portal, limiter)
    memory.keep(limiter, recalled=None)
    assert memory.recall() is None  # still in slow start: the server may take more
    requests = [Request(portal, limiter) for _ in range(8)]
    requests[-1].refuse(1.0)
    for request in requests[:-1]:
        request.succeed()
    memory.keep(limiter, recalled=None)
    assert memory.recall() == round(limiter.settled())
    assert recall_limit(tmp_path, "http://127.0.0.1:1/api/v1/", "B2B", "Embeddings") is not None


def test_a_cache_that_cannot_be_written_warns_once_and_the_run_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    kind = EmbeddingsKind()
    reuse = AnswerReuse.open(kind, tmp_path / "out", cache_dir=tmp_path / "cache")
    assert reuse.store is not None

    def disk_full(items: object) -> None:
        raise CacheUnavailable("cannot use answers.lmdb: No space left on device")

    monkeypatch.setattr(reuse.store, "put_many", disk_full)
    for i in range(3):
        reuse.keep([embed_answer(kind, embed_job(f"a{i}", f"t{i}"), 0.1)])
    reuse.close(finished=True)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "answers are no longer kept for reuse: cannot use answers.lmdb: No space left on device"
    ]
