"""What a job is billed as input, in terms `/tokens/count` can answer exactly.

`/tokens/count` counts texts; the API bills requests. A chat request is billed for every
message's content plus a few tokens per message for its role and separators, plus the
functions it offers (as the JSON the request carries); an embedding text is billed its count
plus a fixed few tokens. `billed_input` turns a job into the texts to count and the overhead
to add, so `gigabatch estimate` can predict `prompt_tokens` from counts alone.

The overheads were measured, not guessed (tests/test_token_counts.py re-measures them on
every run, through gigabatch's client and through the official SDK; bench/estimate_accuracy.py
on whole files):
- Emulator: chat `prompt_tokens` - sum of `/tokens/count` of the contents = 3 per message
  (+ the functions' JSON); embedding usage - count = 5 per text.
- Real API, from the official SDK's recorded answers (ai-forever/gigachat test cassettes,
  GigaChat:2.0.28.2): "Hello, world!" counts 4 tokens and embeds as 9, so +5 per text, as in
  the emulator. The one-message chat "Say 'Hello' and nothing else" (28 characters) was billed
  17 prompt tokens (2 more precached); no count of that exact text was recorded, but at the
  3.25 characters per token of "Hello, world!" it is 8-9 tokens, so the real service adds
  about 8-9 tokens to a one-message request, more than the emulator's 3. That is under 1% of
  a 1,000-token prompt but a lot for very short ones: `estimate --sample N` measures the
  overhead on the sampled answers and corrects the estimate, and `--message-overhead N` sets
  it by hand.
- Shared prefixes: requests with one `X-Session-ID` (the chat kind sends one per model,
  system prompt and functions) get their repeated leading messages served from the prompt
  cache as free `precached_prompt_tokens`; `session_key` and `message_keys` let the
  estimate predict that (exactly, on the emulator).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from batch.wire import DEFAULT_CHAT_MODEL
from jobs.chat import session_id

# Tokens a chat message is billed beyond its content's count (role, separators).
MESSAGE_OVERHEAD = 3
# Tokens an embedding text is billed beyond its count.
EMBEDDING_OVERHEAD = 5
DEFAULT_EMBEDDING_MODEL = "Embeddings"


@dataclass(frozen=True, slots=True)
class BilledInput:
    """One job's input as the API bills it: `model` counts `texts`, the bill adds `overhead`."""

    model: str
    texts: tuple[str, ...]
    overhead: int


def chat_input(
    request: Mapping[str, Any], *, message_overhead: int = MESSAGE_OVERHEAD
) -> BilledInput:
    """A chat request body: each message's content, then the functions as one JSON text
    (the list as the request carries it, so its brackets and commas count too)."""
    messages = request.get("messages") or ()
    texts = [str(m.get("content") or "") for m in messages]
    functions = request.get("functions")
    if functions:
        texts.append(orjson.dumps(functions).decode())
    model = str(request.get("model") or DEFAULT_CHAT_MODEL)
    return BilledInput(model, tuple(t for t in texts if t), message_overhead * len(messages))


def session_key(request: Mapping[str, Any]) -> str | None:
    """The `X-Session-ID` the chat kind sends this request with (requests sharing a model,
    system prompt and functions share one), or None: the prompt cache works per session."""
    return session_id(request)


def message_keys(request: Mapping[str, Any]) -> list[bytes]:
    """One digest per message (role and content), to find the prefix two requests share."""
    return [
        hashlib.blake2b(
            f"{m.get('role')}\0{m.get('content') or ''}".encode(), digest_size=12
        ).digest()
        for m in request.get("messages") or ()
    ]


def embedding_input(request: Mapping[str, Any]) -> BilledInput:
    """An embedding job: its text, plus the per-text overhead."""
    model = str(request.get("model") or DEFAULT_EMBEDDING_MODEL)
    return BilledInput(model, (str(request["text"]),), EMBEDDING_OVERHEAD)


def billed_input(
    kind: str, request: Mapping[str, Any], *, message_overhead: int = MESSAGE_OVERHEAD
) -> BilledInput:
    """The billed input of a job of `kind` ("chat" or "embed")."""
    if kind == "chat":
        return chat_input(request, message_overhead=message_overhead)
    if kind == "embed":
        return embedding_input(request)
    raise ValueError(f"unknown job kind {kind!r}")
