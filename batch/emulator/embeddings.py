"""Embedding answers: the one place that turns an `/embeddings` request body into the bytes
the emulator answers, online and for a batch task alike, so both give the same vectors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from batch.emulator.chat import RequestRejected
from batch.emulator.config import EmulatorConfig
from batch.emulator.content import embedding_json
from batch.emulator.models import MODELS
from batch.emulator.tokens import EMBEDDING_OVERHEAD, count_tokens


@dataclass(frozen=True, slots=True)
class EmbeddingsAnswer:
    """The answer body, the texts' own tokens (for latency) and the billed usage."""

    body: bytes
    text_tokens: int
    usage: int


def input_texts(body: Mapping[str, Any]) -> list[str]:
    raw = body.get("input")
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw or not all(isinstance(t, str) for t in raw):
        raise RequestRejected(422, "input must be a non-empty list of strings")
    return raw


def answer(body: Mapping[str, Any], config: EmulatorConfig) -> EmbeddingsAnswer:
    """The answer to one embeddings request body; RequestRejected for 404/413/422."""
    spec = MODELS.get(body.get("model", "Embeddings"))
    if spec is None or spec.type != "embedder":
        raise RequestRejected(404, "No such model")
    texts = input_texts(body)
    counts = [count_tokens(text) for text in texts]
    limit = spec.limit_for(config)
    for index, count in enumerate(counts):
        if count > limit:
            raise RequestRejected(
                413, f"Input {index} has {count} tokens, over the limit of {limit}"
            )
    # Built as bytes around the precomputed vector text and joined once: serialising
    # 16 x 1024 floats would cost more than everything else in the request together.
    parts = [b'{"object":"list","model":%s,"data":[' % orjson.dumps(spec.id)]
    for index, (text, count) in enumerate(zip(texts, counts, strict=True)):
        parts.append(b'{"object":"embedding","embedding":' if index == 0
                     else b',{"object":"embedding","embedding":')
        parts.append(embedding_json(text, spec.id, spec.dims))
        parts.append(b',"index":%d,"usage":{"prompt_tokens":%d}}'
                     % (index, count + EMBEDDING_OVERHEAD))
    parts.append(b"]}")
    usage = sum(counts) + EMBEDDING_OVERHEAD * len(counts)
    return EmbeddingsAnswer(b"".join(parts), sum(counts), usage)
