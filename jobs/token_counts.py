"""What a job is billed as input, in terms `/tokens/count` can answer exactly.

`/tokens/count` counts texts; the API bills requests. A chat request is billed for every
message's content plus a few tokens per message for its role and separators, plus the
functions it offers (as the JSON the request carries); an embedding text is billed its count
plus a fixed few tokens. `billed_input` turns a job into the texts to count and the overhead
to add, so `gigabatch estimate` can predict `prompt_tokens` from counts alone.

The overheads were measured, not guessed (tests/test_token_counts.py re-measures them on
every run against the emulator; bench/estimate_accuracy.py on whole files):
- Emulator: chat `prompt_tokens` - sum of `/tokens/count` of the contents = 3 per message
  (+ the functions' JSON); embedding usage - count = 5 per text.
- Real API, from the official SDK's recorded answers (ai-forever/gigachat test cassettes,
  GigaChat:2.0.28.2): "Hello, world!" counts 4 tokens and embeds as 9 (so +5 per text, as the
  emulator does); the one-message chat "Say 'Hello' and nothing else" (28 characters, about 7
  counted tokens) was billed 17 prompt tokens, i.e. about 10 tokens of overhead for a
  one-message request. The emulator's 3 per message is therefore an under-estimate for the
  real service on very short prompts (about 1% of a 1,000-token prompt); `--message-overhead`
  lets a user calibrate it from one real answer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from jobs.chat import session_id

# Tokens a chat message is billed beyond its content's count (role, separators).
MESSAGE_OVERHEAD = 3
# Tokens an embedding text is billed beyond its count.
EMBEDDING_OVERHEAD = 5
DEFAULT_CHAT_MODEL = "GigaChat"
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
