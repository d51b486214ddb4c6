"""Embedding jobs: texts packed many to a request, each answered as a fixed-size float32 vector.

The packer (jobs/embedding_packing.py) groups up to `batch_size` jobs and `max_batch_chars`
characters of distinct text per request; a text repeated inside a pending batch is sent
once, and a bounded LRU of recent vectors answers repeats across batches without a request.
A text over the model's input limit fails its row (or is truncated with
`on_long_text="truncate"`): long texts are counted exactly with `/tokens/count`, and a 413
on a many-text request is bisected down to the text that caused it, so the other texts
still get their vectors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

import pyarrow as pa

from batch import wire
from batch.api_types import Embeddings, TokenCount, Usage
from batch.cache.answers import CachedAnswer
from batch.cache.keys import canonical_json, embedding_material
from batch.errors import ConfigError, PayloadTooLarge
from jobs.base import (
    AdmittedInput,
    Batch,
    BilledInput,
    Job,
    JobFailure,
    JobKind,
    JobOutcome,
    JobResult,
    KindOption,
    KindOptions,
    Problem,
    SourceLocation,
)
from jobs.embedding_answers import (
    CACHE_BYTES,
    Answer,
    Rejected,
    Vector,
    VectorCache,
    cache_entry,
    cached_columns,
    cached_row,
    embedding_row,
    result_schema,
    vectors_from_answer,
)
from jobs.embedding_limits import fit_input_limit
from jobs.embedding_packing import EmbeddingPacker, EmbeddingPayload
from jobs.registry import register
from jobs.tokens import token_ceiling
from jobs.validation import RecordFields, token_limit_problem


@dataclass(frozen=True, slots=True)
class EmbeddingModel:
    """What the output schema and the length check need to know about a model."""

    dim: int
    max_input_tokens: int


# Third-party documented limits; `extra={"max_input_tokens": N}` overrides them, and
# `extra={"embedding_dim": D}` lets a model missing here be used.
MODELS: Mapping[str, EmbeddingModel] = {
    "Embeddings": EmbeddingModel(dim=1024, max_input_tokens=512),
    "Embeddings-2": EmbeddingModel(dim=1024, max_input_tokens=512),
    "EmbeddingsGigaR": EmbeddingModel(dim=2560, max_input_tokens=4096),
}
DEFAULT_MODEL = "Embeddings"
DEFAULT_MAX_INPUT_TOKENS = 512
# Billed usage per text is its count plus about 5; a ceiling for budget reservations.
EMBEDDING_OVERHEAD_CEILING = 8
# Tokens a text is billed beyond its /tokens/count, measured (tests/test_token_counts.py).
EMBEDDING_OVERHEAD = 5
_FIELDS = ("id", "text", "model", "metadata")


@dataclass(frozen=True, slots=True)
class EmbeddingOptions(KindOptions):
    """How texts are packed into requests, and what happens to one over the input limit."""

    batch_size: int = 64
    max_batch_chars: int = 200_000
    on_long_text: Literal["fail", "truncate"] = "fail"


CLI_OPTIONS = (
    KindOption(
        "--batch-size",
        "batch_size",
        "Embeddings: most texts per request.",
        int,
        default=64,
        minimum=1,
    ),
    KindOption(
        "--on-long-text",
        "on_long_text",
        "Embeddings: a text over the model's input limit fails its row, or is truncated.",
        default="fail",
        choices=("fail", "truncate"),
    ),
)


class EmbeddingsClient(Protocol):
    """The part of GigaChatClient embedding jobs use."""

    async def embeddings(self, inputs: Sequence[str], model: str) -> Embeddings: ...

    async def tokens_count(self, inputs: Sequence[str], model: str) -> list[TokenCount]: ...



@register
class EmbeddingsKind(JobKind):
    """Embeddings, many texts per request."""

    name: ClassVar[str] = "embed"
    aliases: ClassVar[tuple[str, ...]] = ("embeddings",)
    options_type: ClassVar[type[KindOptions]] = EmbeddingOptions
    cli_options: ClassVar[tuple[KindOption, ...]] = CLI_OPTIONS
    batch_api_method: ClassVar[str] = "embedder"
    has_output: ClassVar[bool] = False
    summary: ClassVar[str] = "a text to embed"
    cached_by_default: ClassVar[bool] = True
    keeps_answers: ClassVar[bool] = True
    options: EmbeddingOptions

    def __init__(self, options: EmbeddingOptions | None = None) -> None:
        options = options if options is not None else EmbeddingOptions()
        if options.batch_size < 1 or options.max_batch_chars < 1:
            raise ConfigError("--batch-size and the batch character budget must be at least 1")
        self.options = options
        self.model = options.model or DEFAULT_MODEL
        dim = self._dim(self.model)
        if dim is None:
            raise ConfigError(
                f"unknown embeddings model '{self.model}' (known: {', '.join(MODELS)}): "
                "its vector size must be given as embedding_dim"
            )
        self.dim = dim
        self.cache = VectorCache(int(options.extra.get("cache_bytes", CACHE_BYTES)))
        self._sources = {name: name for name in _FIELDS}
        if options.id_column:
            self._sources["id"] = options.id_column
        if options.text_column:
            self._sources["text"] = options.text_column

    def _dim(self, model: str) -> int | None:
        known = MODELS.get(model)
        if known is not None:
            return known.dim
        override = self.options.extra.get("embedding_dim")
        return int(override) if override else None

    def max_input_tokens(self, model: str) -> int:
        override = self.options.extra.get("max_input_tokens")
        if override:
            return int(override)
        known = MODELS.get(model)
        return known.max_input_tokens if known else DEFAULT_MAX_INPUT_TOKENS

    def source_fields(self) -> Mapping[str, str]:
        return self._sources

    def answer_settings(self) -> Mapping[str, Any]:
        return {
            "kind": self.name,
            "model": self.model,
            "dim": self.dim,
            "max_input_tokens": self.max_input_tokens(self.model),
            "on_long_text": self.options.on_long_text,
            "columns": dict(self._sources),
        }

    def job_from_record(self, record: Mapping[str, Any], location: SourceLocation) -> Job:
        fields = RecordFields(record, location, self._sources)
        job_id = fields.job_id()
        text = fields.string("text")
        if not fields.has("text"):
            fields.add_problem("text", "missing")
        model = fields.string("model")
        if model is not None:
            dim = self._dim(model)
            if dim is None:
                known = ", ".join(MODELS)
                fields.add_problem("model", f"unknown embeddings model (known: {known})")
            elif dim != self.dim:
                fields.add_problem(
                    "model",
                    f"gives {dim}-dimensional vectors, but this run writes {self.dim} "
                    f"({self.model}); split the file by model",
                )
        fields.check()
        return Job(
            id=job_id,
            location=location,
            request={"model": model or self.model, "text": text},
            metadata=fields.value("metadata"),
        )

    def size_problems(self, job: Job) -> list[Problem]:
        """A text certainly over its model's input limit (jobs.validation), unless over-long
        texts are truncated."""
        if self.options.on_long_text == "truncate":
            return []
        model, text = job.request["model"], job.request["text"]
        limit = self.max_input_tokens(model)
        return token_limit_problem(
            job.location, self._sources["text"], [text], limit, "input limit", model
        )

    def packer(self) -> EmbeddingPacker:
        return EmbeddingPacker(self.options.batch_size, self.options.max_batch_chars)

    def reserve(self, batch: Batch) -> Usage:
        payload: EmbeddingPayload = batch.payload
        limit = self.max_input_tokens(payload.model)
        tokens = sum(
            min(token_ceiling(len(text)), limit) + EMBEDDING_OVERHEAD_CEILING
            for text in payload.texts
        )
        return Usage(prompt_tokens=tokens)

    async def send(self, client: EmbeddingsClient, batch: Batch) -> Sequence[JobOutcome]:
        """Answers from an earlier try of this batch (billed then, counted now), from the
        cache (billed to another job), and from requests for the rest."""
        payload: EmbeddingPayload = batch.payload
        answers: dict[int, Answer] = dict(payload.received)
        todo: dict[int, str] = {}
        for slot, text in enumerate(payload.texts):
            if slot in answers:
                continue
            cached = self.cache.get(VectorCache.key(payload.model, text))
            if cached is None:
                todo[slot] = text
            else:
                answers[slot] = cached
        billable = set(payload.received) | set(todo)
        if todo:
            sendable, rejected = await self._fit(client, payload.model, todo)
            answers.update(rejected)
            if sendable:
                answers.update(await self._embed(client, payload, list(sendable.items())))
        return self._outcomes(batch, answers, billable=billable)

    def received(self, batch: Batch) -> Sequence[JobOutcome]:
        payload: EmbeddingPayload = batch.payload
        return self._outcomes(batch, payload.received, set(payload.received), partial=True)

    def request_body(self, batch: Batch) -> dict[str, Any]:
        payload: EmbeddingPayload = batch.payload
        return {"model": payload.model, "input": list(payload.texts)}

    def outcomes(self, batch: Batch, body: Mapping[str, Any]) -> Sequence[JobOutcome]:
        payload: EmbeddingPayload = batch.payload
        items = list(enumerate(payload.texts))
        answers = vectors_from_answer(wire.embeddings_from_json(body), items, self.dim)
        return self._outcomes(batch, answers, billable=set(answers))

    def billed_input(self, job: Job, *, message_overhead: int | None = None) -> BilledInput:
        """Its text, plus the per-text overhead; a repeat is answered from the run's cache."""
        model = str(job.request.get("model") or self.model)
        return BilledInput(
            model, (str(job.request["text"]),), EMBEDDING_OVERHEAD, deduplicated=True
        )

    def admit_input(self, model: str, tokens: int) -> AdmittedInput:
        """A text over the limit fails without being sent (so neither it nor its overhead
        is billed), or is truncated to the limit."""
        limit = self.max_input_tokens(model)
        if tokens <= limit:
            return AdmittedInput(tokens)
        if self.options.on_long_text == "truncate":
            return AdmittedInput(limit, over_limit=True)
        return AdmittedInput(-EMBEDDING_OVERHEAD, over_limit=True)

    def balance_usage(self, model: str) -> str:
        return "embeddings"  # every embeddings model draws on one usage in /balance

    def input_note(self, message_overhead: int | None = None) -> str:
        return f"embedding input includes {EMBEDDING_OVERHEAD} tokens per text beyond /tokens/count"

    def over_limit_note(self, texts: int) -> str:
        return f"{texts} texts exceed the model's input limit: the run " + (
            "truncates them (counted at the limit)"
            if self.options.on_long_text == "truncate"
            else "fails them without sending (not counted; --on-long-text truncate cuts them)"
        )

    def cache_material(self, job: Job) -> bytes:
        """The model and the exact text. A truncating run's answers are kept apart: an
        over-long text gets a vector there and fails its row otherwise."""
        model, text = str(job.request["model"]), str(job.request["text"])
        if self.options.on_long_text == "truncate":
            return canonical_json([model, text, "truncate"])
        return embedding_material(model, text)

    def cache_entry(self, outcome: JobResult) -> CachedAnswer:
        return cache_entry(outcome)

    def cached_row(self, job: Job, answer: CachedAnswer) -> JobResult:
        return cached_row(job, answer)

    def cached_columns(
        self, jobs: Sequence[Job], answers: Sequence[CachedAnswer]
    ) -> dict[str, pa.Array] | None:
        return cached_columns(jobs, answers, self.dim)

    def _outcomes(
        self,
        batch: Batch,
        answers: Mapping[int, Answer],
        billable: set[int],
        *,
        partial: bool = False,
    ) -> list[JobOutcome]:
        """One outcome per job (`partial`: per job whose text has an answer); a text sent
        for several jobs is billed to the first."""
        payload: EmbeddingPayload = batch.payload
        outcomes: list[JobOutcome] = []
        for job, slot in zip(batch.jobs, payload.slots, strict=True):
            if partial and slot not in answers:
                continue
            answer = answers[slot]
            if isinstance(answer, Rejected):
                outcomes.append(
                    JobFailure(
                        job, "PayloadTooLarge", answer.message, answer.status, answer.request_id
                    )
                )
                continue
            billed = slot in billable
            usage = Usage(prompt_tokens=answer.tokens) if billed else Usage()
            billable.discard(slot)
            row = embedding_row(job, answer.values, answer.tokens, answer.model)
            outcomes.append(
                JobResult(job, row, usage, answer.model, answer.usage_known or not billed)
            )
        return outcomes

    async def _fit(
        self, client: EmbeddingsClient, model: str, texts: dict[int, str]
    ) -> tuple[dict[int, str], dict[int, Answer]]:
        """The texts to send (truncated where allowed) and the rejected ones."""
        sendable, reasons = await fit_input_limit(
            client, model, texts, self.max_input_tokens(model), self.options.on_long_text
        )
        return sendable, {i: Rejected(reason) for i, reason in reasons.items()}

    async def _embed(
        self, client: EmbeddingsClient, payload: EmbeddingPayload, items: list[tuple[int, str]]
    ) -> dict[int, Answer]:
        """Answers for `items` (slot, text); a 413 is bisected to the text that causes it.
        Each answer is kept in `payload.received` (and vectors in the cache) as soon as it
        arrives, so when a later half fails, a retry of the batch sends only the rest."""
        model = payload.model
        try:
            answer = await client.embeddings([text for _, text in items], model)
        except PayloadTooLarge as exc:
            if len(items) == 1:
                rejected: dict[int, Answer] = {
                    items[0][0]: Rejected(
                        f"the API refused the text as too large: {exc.message}",
                        exc.status,
                        exc.request_id,
                    )
                }
                payload.received.update(rejected)
                return rejected
            middle = len(items) // 2
            first = await self._embed(client, payload, items[:middle])
            return first | await self._embed(client, payload, items[middle:])
        vectors = vectors_from_answer(answer, items, self.dim)
        payload.received.update(vectors)
        for slot, vector in vectors.items():
            if isinstance(vector, Vector):
                self.cache.put(VectorCache.key(model, payload.texts[slot]), vector)
        return vectors

    def result_schema(self) -> pa.Schema:
        return result_schema(self.dim)
