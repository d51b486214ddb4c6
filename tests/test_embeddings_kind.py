"""The embeddings job kind: packing, dedupe, the vector LRU, long texts (fail, truncate,
413 bisection) and rows that fit the fixed-size-list schema."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import anyio
import pyarrow as pa
import pytest

from batch.api_types import EmbeddingItem, Embeddings, TokenCount, Usage
from batch.client import GigaChatClient
from batch.emulator import RunningEmulator, profile, serve_emulator
from batch.emulator.tokens import count_tokens
from batch.errors import FatalError, PayloadTooLarge, RateLimited, ServerError
from batch.settings import ClientSettings
from jobs.base import Batch, Job, JobFailure, JobOutcome, JobResult, SourceLocation
from jobs.embedding_answers import Vector, VectorCache
from jobs.embedding_packing import MAX_PENDING_MODELS, EmbeddingPayload
from jobs.embeddings import EmbeddingOptions, EmbeddingsKind


class FakeEmbeddingsClient:
    """One token per character; 413 over `limit`; vectors encode the text's length and come
    back in reverse order, so mapping by `index` is checked."""

    def __init__(self, *, dim: int = 1024, limit: int = 512, model: str = "Embeddings") -> None:
        self.dim = dim
        self.limit = limit
        self.model = model
        self.embedded: list[list[str]] = []
        self.counted: list[list[str]] = []

    async def embeddings(self, inputs: Sequence[str], model: str) -> Embeddings:
        self.embedded.append(list(inputs))
        if any(len(text) > self.limit for text in inputs):
            raise PayloadTooLarge("Input has too many tokens", status=413, request_id="r-413")
        items = [
            EmbeddingItem(
                index=i, embedding=vector_for(text, self.dim), prompt_tokens=len(text) + 5
            )
            for i, text in enumerate(inputs)
        ]
        return Embeddings(model=self.model, items=items[::-1], request_id="r-1")

    async def tokens_count(self, inputs: Sequence[str], model: str) -> list[TokenCount]:
        self.counted.append(list(inputs))
        return [TokenCount(tokens=len(text), characters=len(text)) for text in inputs]


def vector_for(text: str, dim: int = 1024) -> list[float]:
    return [float(len(text))] + [0.5] * (dim - 1)


def _jobs(kind: EmbeddingsKind, *texts: str, model: str | None = None) -> list[Job]:
    jobs = []
    for n, text in enumerate(texts, 1):
        record: dict[str, Any] = {"id": f"j{n}", "text": text}
        if model:
            record["model"] = model
        jobs.append(kind.job_from_record(record, SourceLocation("e.jsonl", n)))
    return jobs


def _pack(kind: EmbeddingsKind, jobs: list[Job]) -> list[Batch]:
    packer = kind.packer()
    batches = [batch for job in jobs for batch in packer.add(job)]
    return batches + packer.flush()


def _send(kind: EmbeddingsKind, client: FakeEmbeddingsClient, batch: Batch) -> list[JobOutcome]:
    async def go() -> list[JobOutcome]:
        return list(await kind.send(client, batch))

    return anyio.run(go)


def _results(outcomes: list[JobOutcome]) -> list[JobResult]:
    assert all(isinstance(o, JobResult) for o in outcomes), outcomes
    return [o for o in outcomes if isinstance(o, JobResult)]


def test_packer_closes_a_batch_at_batch_size_jobs() -> None:
    kind = EmbeddingsKind(EmbeddingOptions(batch_size=3))
    batches = _pack(kind, _jobs(kind, *"abcdefg"))
    assert [len(b.jobs) for b in batches] == [3, 3, 1]


def test_packer_keeps_a_batch_under_the_character_budget() -> None:
    kind = EmbeddingsKind(EmbeddingOptions(max_batch_chars=10))
    batches = _pack(kind, _jobs(kind, "aaaa", "bbbb", "cccc", "x" * 25, "dd"))
    assert [b.payload.texts for b in batches] == [["aaaa", "bbbb"], ["cccc"], ["x" * 25], ["dd"]]


def test_packer_sends_identical_texts_once_per_batch() -> None:
    kind = EmbeddingsKind(EmbeddingOptions())
    (batch,) = _pack(kind, _jobs(kind, "кот", "dog", "кот", "кот"))
    payload: EmbeddingPayload = batch.payload
    assert payload.texts == ["кот", "dog"]
    assert payload.slots == [0, 1, 0, 0]


def test_packer_keeps_models_apart() -> None:
    kind = EmbeddingsKind(EmbeddingOptions())
    jobs = _jobs(kind, "a", "b") + _jobs(kind, "c", model="Embeddings-2")
    batches = _pack(kind, jobs)
    assert {b.payload.model: b.payload.texts for b in batches} == {
        "Embeddings": ["a", "b"],
        "Embeddings-2": ["c"],
    }


def test_packer_sends_the_oldest_models_batch_when_too_many_are_pending() -> None:
    kind = EmbeddingsKind(EmbeddingOptions(extra={"embedding_dim": 1024}))
    jobs = [job for n in range(MAX_PENDING_MODELS + 1) for job in _jobs(kind, "t", model=f"m{n}")]
    packer = kind.packer()
    early = [batch for job in jobs for batch in packer.add(job)]
    assert [b.payload.model for b in early] == ["m0"]
    assert len(packer.flush()) == MAX_PENDING_MODELS


def test_vectors_are_mapped_back_by_index() -> None:
    kind = EmbeddingsKind(EmbeddingOptions())
    (batch,) = _pack(kind, _jobs(kind, "a", "bb", "ccc"))
    results = _results(_send(kind, FakeEmbeddingsClient(), batch))
    assert [(r.job.id, r.row["embedding"][0]) for r in results] == [
        ("j1", 1.0),
        ("j2", 2.0),
        ("j3", 3.0),
    ]
    assert [r.usage for r in results] == [Usage(6), Usage(7), Usage(8)]


def test_a_repeated_text_is_billed_once_and_answers_every_job() -> None:
    kind = EmbeddingsKind(EmbeddingOptions())
    client = FakeEmbeddingsClient()
    (batch,) = _pack(kind, _jobs(kind, "same", "other", "same"))
    results = _results(_send(kind, client, batch))
    assert client.embedded == [["same", "other"]]
    assert [r.row["embedding"][0] for r in results] == [4.0, 5.0, 4.0]
    assert [r.row["prompt_tokens"] for r in results] == [9, 10, 9]
    assert [r.usage.prompt_tokens for r in results] == [9, 10, 0]


def test_texts_seen_in_earlier_batches_are_answered_from_the_cache() -> None:
    kind = EmbeddingsKind(EmbeddingOptions(batch_size=2))
    client = FakeEmbeddingsClient()
    first, second = _pack(kind, _jobs(kind, "alpha", "beta", "beta", "alpha"))
    _send(kind, client, first)
    results = _results(_send(kind, client, second))
    assert client.embedded == [["alpha", "beta"]]
    assert [r.row["embedding"][0] for r in results] == [4.0, 5.0]
    assert [r.usage for r in results] == [Usage(), Usage()]
    assert [r.model for r in results] == ["Embeddings", "Embeddings"]


def test_vector_cache_stays_within_its_byte_bound() -> None:
    cache = VectorCache(max_bytes=10 * 4096)
    for n in range(1000):
        cache.put(VectorCache.key("Embeddings", str(n)), _vector(n))
    assert len(cache) == 10
    assert cache.used <= 10 * 4096
    assert cache.get(VectorCache.key("Embeddings", "999")) is not None
    assert cache.get(VectorCache.key("Embeddings", "0")) is None


def test_vector_cache_evicts_the_least_recently_used() -> None:
    cache = VectorCache(max_bytes=2 * 4096)
    a, b, c = (VectorCache.key("Embeddings", t) for t in "abc")
    cache.put(a, _vector(1))
    cache.put(b, _vector(2))
    assert cache.get(a) is not None
    cache.put(c, _vector(3))
    assert cache.get(b) is None
    assert cache.get(a) is not None


def _vector(n: int) -> Vector:
    from array import array

    return Vector(array("f", [float(n)] * 1024), tokens=n, model="Embeddings")


def test_text_over_the_limit_fails_its_row_with_the_reason() -> None:
    kind = EmbeddingsKind(EmbeddingOptions())
    client = FakeEmbeddingsClient()
    long_text = "я" * 1500
    (batch,) = _pack(kind, _jobs(kind, "short", long_text, "tiny"))
    outcomes = _send(kind, client, batch)
    failure = outcomes[1]
    assert isinstance(failure, JobFailure)
    assert failure.error_class == "PayloadTooLarge"
    assert "1500 tokens, over the 512-token input limit of Embeddings" in failure.message
    assert "--on-long-text truncate" in failure.message
    assert client.counted == [[long_text]]
    assert client.embedded == [["short", "tiny"]]
    assert [o.job.id for o in outcomes if isinstance(o, JobResult)] == ["j1", "j3"]


def test_truncate_mode_cuts_a_long_text_under_the_limit() -> None:
    kind = EmbeddingsKind(EmbeddingOptions(on_long_text="truncate"))
    client = FakeEmbeddingsClient()
    (batch,) = _pack(kind, _jobs(kind, "w" * 3000, "short"))
    results = _results(_send(kind, client, batch))
    sent = client.embedded[0][0]
    assert "w" * 400 in sent
    assert len(sent) <= 512
    assert results[0].row["embedding"][0] == float(len(sent))


def test_413_on_a_many_text_request_is_bisected_to_the_offending_text() -> None:
    kind = EmbeddingsKind(EmbeddingOptions())
    client = FakeEmbeddingsClient(limit=100)  # the server is stricter than the table says
    texts = [f"text {n}" for n in range(7)] + ["z" * 300]
    (batch,) = _pack(kind, _jobs(kind, *texts))
    outcomes = _send(kind, client, batch)
    failures = [o for o in outcomes if isinstance(o, JobFailure)]
    assert [(f.job.id, f.status, f.request_id) for f in failures] == [("j8", 413, "r-413")]
    assert "too large" in failures[0].message
    assert sum(isinstance(o, JobResult) for o in outcomes) == 7
    assert len(client.embedded) <= 1 + 2 * 3  # a bisection, not one request per text


def test_a_lone_text_refused_with_413_fails_its_jobs() -> None:
    kind = EmbeddingsKind(EmbeddingOptions())
    (batch,) = _pack(kind, _jobs(kind, "z" * 300, "z" * 300))
    outcomes = _send(kind, FakeEmbeddingsClient(limit=100), batch)
    assert [type(o).__name__ for o in outcomes] == ["JobFailure", "JobFailure"]


def test_other_api_errors_propagate_for_the_engine() -> None:
    class Limited(FakeEmbeddingsClient):
        async def embeddings(self, inputs: Sequence[str], model: str) -> Embeddings:
            raise RateLimited(retry_after=1.0)

    kind = EmbeddingsKind(EmbeddingOptions())
    (batch,) = _pack(kind, _jobs(kind, "a"))
    with pytest.raises(RateLimited):
        _send(kind, Limited(), batch)


def test_vector_size_mismatch_stops_the_run() -> None:
    kind = EmbeddingsKind(EmbeddingOptions())
    (batch,) = _pack(kind, _jobs(kind, "a"))
    with pytest.raises(FatalError, match="768-dimensional"):
        _send(kind, FakeEmbeddingsClient(dim=768), batch)


def test_answer_missing_a_vector_is_a_server_error() -> None:
    class Short(FakeEmbeddingsClient):
        async def embeddings(self, inputs: Sequence[str], model: str) -> Embeddings:
            answer = await super().embeddings(inputs, model)
            return Embeddings(answer.model, answer.items[1:], answer.request_id)

    kind = EmbeddingsKind(EmbeddingOptions())
    (batch,) = _pack(kind, _jobs(kind, "a", "b"))
    with pytest.raises(ServerError, match="1 vectors for 2 texts"):
        _send(kind, Short(), batch)


@pytest.mark.parametrize(("model", "dim"), [("Embeddings", 1024), ("EmbeddingsGigaR", 2560)])
def test_rows_fit_the_fixed_size_list_schema(model: str, dim: int) -> None:
    kind = EmbeddingsKind(EmbeddingOptions(model=model))
    (batch,) = _pack(kind, _jobs(kind, "a", "bb"))
    results = _results(_send(kind, FakeEmbeddingsClient(dim=dim, model=model), batch))
    rows = [{"id": r.job.id, **r.row, "attempts": 1, "latency_ms": 3.0} for r in results]
    table = pa.Table.from_pylist(rows, schema=kind.result_schema())
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), dim)
    assert table.column("embedding").to_pylist()[1][0] == 2.0
    assert set(table.schema.names) == set(rows[0])


def test_reservation_covers_the_billed_usage() -> None:
    """Against the emulator's tokenizer (a word piece per 4 characters, 1 per mark)."""
    kind = EmbeddingsKind(EmbeddingOptions())
    (batch,) = _pack(
        kind, _jobs(kind, "short text", "другой текст подлиннее", "x" * 5000, "!?" * 300)
    )
    reserved = kind.reserve(batch)
    billed = sum(min(count_tokens(t), 512) + 5 for t in batch.payload.texts)
    assert reserved.prompt_tokens >= billed


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    with serve_emulator(profile("b2b", latency_base_ms=0, seed=3)) as running:
        yield running


def _send_for_real(emu: RunningEmulator, kind: EmbeddingsKind, batch: Batch) -> list[JobOutcome]:
    settings = ClientSettings.from_env(emu.client_env())

    async def go() -> list[JobOutcome]:
        async with GigaChatClient(settings) as client:
            return list(await kind.send(client, batch))

    return anyio.run(go)


# Over 512 emulator tokens, and long enough for the heuristic to ask /tokens/count.
LONG = "Длинный абзац о доставке и возврате товара. " * 120
# 700 punctuation marks are 700 emulator tokens in 700 characters: the heuristic lets them
# through uncounted, so only the server's 413 (and the bisection) can catch them.
DENSE = "!?" * 350


def test_long_texts_fail_alone_against_the_emulator(emulator: RunningEmulator) -> None:
    kind = EmbeddingsKind(EmbeddingOptions())
    (batch,) = _pack(kind, _jobs(kind, "первый", LONG, "second", DENSE, "third"))
    outcomes = _send_for_real(emulator, kind, batch)
    assert [type(o).__name__ for o in outcomes] == [
        "JobResult",
        "JobFailure",
        "JobResult",
        "JobFailure",
        "JobResult",
    ]
    counted, refused = outcomes[1], outcomes[3]
    assert isinstance(counted, JobFailure) and "input limit of Embeddings" in counted.message
    assert isinstance(refused, JobFailure) and refused.status == 413
    assert all(len(o.row["embedding"]) == 1024 for o in outcomes if isinstance(o, JobResult))


def test_truncate_mode_embeds_long_texts_against_the_emulator(emulator: RunningEmulator) -> None:
    kind = EmbeddingsKind(EmbeddingOptions(on_long_text="truncate"))
    (batch,) = _pack(kind, _jobs(kind, LONG, "short"))
    results = _results(_send_for_real(emulator, kind, batch))
    assert 500 <= results[0].row["prompt_tokens"] <= 512 + 5


class FailsOnce(FakeEmbeddingsClient):
    """A 503 the first time a request holds `text`."""

    def __init__(self, text: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.text = text
        self.failed = False

    async def embeddings(self, inputs: Sequence[str], model: str) -> Embeddings:
        if self.text in inputs and not self.failed and len(inputs) == 1:
            self.embedded.append(list(inputs))
            self.failed = True
            raise ServerError("busy", status=503)
        return await super().embeddings(inputs, model)


def test_a_retry_after_a_5xx_inside_a_bisection_sends_only_what_is_unanswered() -> None:
    kind = EmbeddingsKind(EmbeddingOptions())
    texts = ["a1", "a2", "a3", "z" * 300]
    client = FailsOnce("a3", limit=100)
    (batch,) = _pack(kind, _jobs(kind, *texts))
    with pytest.raises(ServerError):
        _send(kind, client, batch)
    first_try = len(client.embedded)
    assert [o.job.id for o in kind.received(batch)] == ["j1", "j2"]  # kept for the engine
    outcomes = _send(kind, client, batch)
    retried = client.embedded[first_try:]
    assert all("a1" not in sent and "a2" not in sent for sent in retried)
    billed = {o.job.id: o.usage.prompt_tokens for o in outcomes if isinstance(o, JobResult)}
    assert billed == {"j1": 7, "j2": 7, "j3": 7}  # each billed once, the earlier ones included
