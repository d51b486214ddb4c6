"""The pure halves of a job kind: the body of a batch's request and the outcomes read back
from an answer body (what GigaChat's batch API carries per task line)."""

from __future__ import annotations

from typing import Any

import pytest

from batch.errors import ServerError
from jobs.base import Job, JobResult, SourceLocation
from jobs.chat import ChatKind, ChatOptions
from jobs.embeddings import EmbeddingOptions, EmbeddingsKind

HERE = SourceLocation("jobs.jsonl", 1)


def _chat_body(content: str) -> dict[str, Any]:
    return {
        "choices": [
            {"message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
        "model": "GigaChat:2.0.28.2",
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "precached_prompt_tokens": 2},
    }


def test_chat_request_body_is_the_jobs_request() -> None:
    kind = ChatKind(ChatOptions(temperature=0.5))
    job = kind.job_from_record({"id": "a", "prompt": "hi"}, HERE)
    batch = kind.packer().add(job)[0]
    assert kind.request_body(batch) == {
        "model": "GigaChat",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.5,
    }
    assert kind.batch_api_method == "chat_completions"


def test_chat_outcomes_read_content_usage_and_model_version() -> None:
    kind = ChatKind(ChatOptions())
    job = kind.job_from_record({"id": "a", "prompt": "hi", "metadata": {"k": 1}}, HERE)
    batch = kind.packer().add(job)[0]
    [outcome] = kind.outcomes(batch, _chat_body("hello"))
    assert isinstance(outcome, JobResult)
    assert outcome.row["content"] == "hello"
    assert outcome.row["model"] == "GigaChat:2.0.28.2"
    assert outcome.row["total_tokens"] == 10
    assert outcome.row["metadata"] == '{"k":1}'
    assert outcome.usage.precached_prompt_tokens == 2


def test_chat_outcomes_of_a_body_without_choices_is_a_server_error() -> None:
    kind = ChatKind(ChatOptions())
    batch = kind.packer().add(kind.job_from_record({"id": "a", "prompt": "hi"}, HERE))[0]
    with pytest.raises(ServerError, match="choices"):
        kind.outcomes(batch, {"status": 500, "message": "oops"})


def _embedding_batch(kind: EmbeddingsKind, *texts: str) -> tuple[list[Job], object]:
    packer = kind.packer()
    jobs = [kind.job_from_record({"id": str(i), "text": t}, HERE) for i, t in enumerate(texts)]
    for job in jobs:
        assert packer.add(job) == []
    [batch] = packer.flush()
    return jobs, batch


def test_embeddings_request_body_sends_each_distinct_text_once() -> None:
    kind = EmbeddingsKind(EmbeddingOptions())
    _, batch = _embedding_batch(kind, "a", "b", "a")
    assert kind.request_body(batch) == {"model": "Embeddings", "input": ["a", "b"]}  # type: ignore[arg-type]
    assert kind.batch_api_method == "embedder"


def test_embeddings_outcomes_map_vectors_by_index_and_bill_a_repeat_once() -> None:
    kind = EmbeddingsKind(EmbeddingOptions())
    jobs, batch = _embedding_batch(kind, "a", "b", "a")
    body = {
        "model": "Embeddings",
        "data": [
            {"index": 1, "embedding": [2.0] * 1024, "usage": {"prompt_tokens": 6}},
            {"index": 0, "embedding": [1.0] * 1024, "usage": {"prompt_tokens": 6}},
        ],
    }
    outcomes = kind.outcomes(batch, body)  # type: ignore[arg-type]
    assert [o.job.id for o in outcomes] == [j.id for j in jobs]
    results = [o for o in outcomes if isinstance(o, JobResult)]
    assert [r.row["embedding"][0] for r in results] == [1.0, 2.0, 1.0]
    assert [r.usage.prompt_tokens for r in results] == [6, 6, 0]


def test_embeddings_outcomes_with_a_missing_vector_are_a_server_error() -> None:
    kind = EmbeddingsKind(EmbeddingOptions())
    _, batch = _embedding_batch(kind, "a", "b")
    body = {"model": "Embeddings", "data": [{"index": 0, "embedding": [1.0] * 1024}]}
    with pytest.raises(ServerError, match="1 vectors for 2 texts"):
        kind.outcomes(batch, body)  # type: ignore[arg-type]
