"""Embedding answers: the vector (or refusal) a request gives each text, the bounded cache of
recent vectors, and the result rows, cached payloads and schema built from them.
"""

from __future__ import annotations

import sys
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from batch.api_types import Embeddings, Usage
from batch.cache.answers import CachedAnswer
from batch.errors import FatalError, ServerError
from batch.lru import Lru, text_key
from jobs.base import Job, JobResult
from jobs.validation import json_text

# The LRU of recent vectors holds at most this many bytes of float32 (4,096 vectors of 1024
# floats, 1,638 of 2560), so memory stays flat however long the run.
CACHE_BYTES = 16 * 1024 * 1024
_BIG_ENDIAN = sys.byteorder == "big"


@dataclass(frozen=True, slots=True)
class Vector:
    values: array[float]
    tokens: int
    model: str
    usage_known: bool = True


@dataclass(frozen=True, slots=True)
class Rejected:
    message: str
    status: int | None = None
    request_id: str | None = None


Answer = Vector | Rejected


class VectorCache(Lru[Vector]):
    """A least-recently-used map of (model, text) keys to answered vectors, bounded in bytes."""

    key = staticmethod(text_key)

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        super().__init__(max_bytes, size=_size)


def _size(vector: Vector) -> int:
    return vector.values.itemsize * len(vector.values)


def vectors_from_answer(
    answer: Embeddings, items: list[tuple[int, str]], dim: int
) -> dict[int, Answer]:
    """The vector of each of `items` (slot, text) by slot, checking the answer's indexes
    and its vectors' size."""
    found: dict[int, Answer] = {}
    for item in answer.items:
        if not 0 <= item.index < len(items) or items[item.index][0] in found:
            raise ServerError(
                f"embeddings answer has an unexpected index {item.index}",
                request_id=answer.request_id,
            )
        if len(item.embedding) != dim:
            raise FatalError(
                f"{answer.model} answered {len(item.embedding)}-dimensional vectors, but "
                f"this run writes {dim}; give the model's embedding_dim",
                request_id=answer.request_id,
            )
        found[items[item.index][0]] = Vector(
            array("f", item.embedding), item.prompt_tokens, answer.model, item.usage_known
        )
    if len(found) != len(items):
        raise ServerError(
            f"embeddings answer has {len(found)} vectors for {len(items)} texts",
            request_id=answer.request_id,
        )
    return found


def embedding_row(job: Job, values: array[float], tokens: int, model: str) -> dict[str, Any]:
    """The result row of `job`'s text answered with `values`."""
    return {
        "embedding": values,
        "prompt_tokens": tokens,
        "model": model,
        "metadata": json_text(job.metadata),
    }


def cache_entry(outcome: JobResult) -> CachedAnswer:
    """A result row's vector as the cache keeps it: little-endian float32 bytes."""
    row = outcome.row
    vector: array[float] = row["embedding"]
    if _BIG_ENDIAN:  # the payload is little-endian float32
        vector = array("f", vector)
        vector.byteswap()
    return CachedAnswer(vector.tobytes(), outcome.model, time.time(), row["prompt_tokens"])


def cached_row(job: Job, answer: CachedAnswer) -> JobResult:
    """`job`'s result from a cached vector."""
    values = array("f")
    values.frombytes(answer.payload)
    if _BIG_ENDIAN:
        values.byteswap()
    row = embedding_row(job, values, answer.tokens, answer.model)
    usage = Usage(prompt_tokens=answer.tokens)
    return JobResult(job=job, row=row, usage=usage, model=answer.model)


def cached_columns(
    jobs: Sequence[Job], answers: Sequence[CachedAnswer], dim: int
) -> dict[str, pa.Array] | None:
    """The answer columns of many cached vectors at once: the vectors' stored bytes are the
    `embedding` column's buffer as they are (little-endian float32, as a sent answer's
    `array('f')`), so no float becomes a Python object. None when a payload is not `dim`
    floats (or on a big-endian host): `cached_row` then handles each answer."""
    width = 4 * dim
    if _BIG_ENDIAN or any(len(answer.payload) != width for answer in answers):
        return None
    data = pa.py_buffer(b"".join([answer.payload for answer in answers]))
    flat = pa.Array.from_buffers(pa.float32(), len(answers) * dim, [None, data])
    return {
        "embedding": pa.FixedSizeListArray.from_arrays(flat, type=pa.list_(pa.float32(), dim)),
        "prompt_tokens": pa.array([answer.tokens for answer in answers], pa.int64()),
        "model": pa.array([answer.model for answer in answers], pa.string()),
        "metadata": pa.array([json_text(job.metadata) for job in jobs], pa.string()),
    }


def result_schema(dim: int) -> pa.Schema:
    """The output's columns for `dim`-dimensional vectors."""
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), dim)),
            pa.field("prompt_tokens", pa.int64()),
            pa.field("model", pa.string()),
            pa.field("latency_ms", pa.float64()),
            pa.field("attempts", pa.int32()),
            pa.field("metadata", pa.string()),
        ]
    )
