"""Chat result rows: the row an answer gives, the part of it the answer cache keeps, and the
result schema.
"""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa

from batch.api_types import ChatCompletion, Usage
from batch.cache.answers import CachedAnswer, chat_from_payload, chat_payload
from jobs.base import Job, JobResult
from jobs.validation import json_text

# The result columns an answer gives (the rest are the engine's, or the job's metadata).
ANSWER_COLUMNS = (
    "content",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "precached_prompt_tokens",
    "total_tokens",
    "function_call",
)

RESULT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("content", pa.string()),
        pa.field("finish_reason", pa.string()),
        pa.field("model", pa.string()),
        pa.field("prompt_tokens", pa.int64()),
        pa.field("completion_tokens", pa.int64()),
        pa.field("precached_prompt_tokens", pa.int64()),
        pa.field("total_tokens", pa.int64()),
        pa.field("latency_ms", pa.float64()),
        pa.field("attempts", pa.int32()),
        pa.field("metadata", pa.string()),
        pa.field("function_call", pa.string()),
    ]
)


def chat_result(job: Job, answer: ChatCompletion) -> JobResult:
    """`job`'s result row from the API's answer."""
    row = {
        "content": answer.content,
        "finish_reason": answer.finish_reason,
        "model": answer.model,
        "prompt_tokens": answer.usage.prompt_tokens,
        "completion_tokens": answer.usage.completion_tokens,
        "precached_prompt_tokens": answer.usage.precached_prompt_tokens,
        "total_tokens": answer.usage.total_tokens,
        "metadata": json_text(job.metadata),
        "function_call": json_text(answer.function_call),
    }
    return JobResult(
        job=job, row=row, usage=answer.usage, model=answer.model, usage_known=answer.usage_known
    )


def cache_entry(outcome: JobResult) -> CachedAnswer:
    """A result's answer columns as the cache keeps them, with the tokens billed for them."""
    row = outcome.row
    fields = {name: row[name] for name in ANSWER_COLUMNS}
    usage = outcome.usage
    billed = usage.total_tokens - usage.precached_prompt_tokens
    return CachedAnswer(chat_payload(fields), outcome.model, time.time(), billed)


def cached_row(job: Job, answer: CachedAnswer) -> JobResult:
    """`job`'s result from a cached answer."""
    fields = chat_from_payload(answer.payload)
    row: dict[str, Any] = {name: fields.get(name) for name in ANSWER_COLUMNS}
    row["model"] = answer.model
    row["metadata"] = json_text(job.metadata)
    usage = Usage(
        prompt_tokens=int(row["prompt_tokens"] or 0),
        completion_tokens=int(row["completion_tokens"] or 0),
        precached_prompt_tokens=int(row["precached_prompt_tokens"] or 0),
    )
    return JobResult(job=job, row=row, usage=usage, model=answer.model)
