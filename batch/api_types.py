"""What the GigaChat API answers, as the client hands it to the rest of gigabatch.

Plain frozen dataclasses: the client's parse functions build them from JSON, job kinds turn
them into output rows, the summary adds up their usage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens one answer was billed for; `precached_prompt_tokens` are free."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    precached_prompt_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.precached_prompt_tokens + other.precached_prompt_tokens,
        )


@dataclass(frozen=True, slots=True)
class ChatCompletion:
    """The first choice of a chat completion, with the model version that produced it."""

    content: str
    finish_reason: str
    model: str
    usage: Usage
    function_call: dict[str, Any] | None = None
    functions_state_id: str | None = None
    request_id: str | None = None
    usage_known: bool = True  # False: the answer's usage was missing or malformed


@dataclass(frozen=True, slots=True)
class EmbeddingItem:
    """One vector; `index` is the position of its text in the request's `input`."""

    index: int
    embedding: list[float]
    prompt_tokens: int
    usage_known: bool = True  # False: the item's usage was missing or malformed


@dataclass(frozen=True, slots=True)
class Embeddings:
    model: str
    items: list[EmbeddingItem]
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class TokenCount:
    tokens: int
    characters: int


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str
    type: str
    owned_by: str = ""


@dataclass(frozen=True, slots=True)
class BalanceEntry:
    usage: str
    value: float


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A bearer token and when it stops working (unix seconds). Never printed."""

    value: str = field(repr=False)
    expires_at: float

    def __repr__(self) -> str:
        return f"AccessToken(value='***', expires_at={self.expires_at!r})"


@dataclass(frozen=True, slots=True)
class BatchInfo:
    """One batch of GigaChat's batch API as its status answer describes it. `status` is
    `created`, `in_progress` or `completed` (the documented ones) or whatever the server says."""

    id: str
    method: str
    status: str
    total: int
    completed: int = 0
    failed: int = 0
    output_file_id: str | None = None
    created_at: int | None = None
    updated_at: int | None = None


@dataclass(frozen=True, slots=True)
class TaskResult:
    """One line of a batch's output file: the task's answer body, or its error."""

    task_id: str | None
    result: dict[str, Any] | None = None
    error_status: int | None = None
    error_message: str | None = None
