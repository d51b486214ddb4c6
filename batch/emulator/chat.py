"""Chat completions: both wire shapes the official SDK speaks, one emulated model.

- Legacy (`POST /api/v1/chat/completions`, SDK `chat`, `stream`, `achat`, `astream`):
  `messages[{role, content}]`, answer `choices[{message, finish_reason}]` + `usage`, streamed
  as `data: {chunk}` frames ending in `data: [DONE]`.
- Primary (`POST /api/v2/chat/completions`, SDK `chat.create`, `chat.stream`): content as
  parts `[{text}]`, options under `model_options`, functions under `tools`, answer
  `messages[]` + `usage{input_tokens, output_tokens}`, streamed as named SSE events.
Both parse into one `ChatRequest`; `complete` computes the `ChatOutcome` from it.
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from batch.emulator import content
from batch.emulator.config import EmulatorConfig
from batch.emulator.models import MODELS, ModelSpec
from batch.emulator.tokens import MESSAGE_OVERHEAD, count_tokens

ROLES = frozenset(
    {"system", "user", "assistant", "function", "search_result", "function_in_progress"}
)
# Sessions remembered for precached_prompt_tokens; the oldest are forgotten first.
MAX_SESSIONS = 10_000
# Stream frames carry this many answer words each.
WORDS_PER_CHUNK = 8


class RequestRejected(Exception):
    """The request fails with `status` and the API's `{status, message}` body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class ChatRequest:
    """A chat request, whichever shape it came in."""

    model: ModelSpec
    messages: list[tuple[str, str]]
    functions: list[Mapping[str, Any]] = field(default_factory=list)
    function_call: str | None = None  # "auto", "none" or the name of a forced function
    max_tokens: int | None = None
    n: int = 1
    stream: bool = False


@dataclass
class ChatOutcome:
    """What the emulated model answers, with the usage the API reports."""

    text: str
    finish_reason: str
    function_call: dict[str, Any] | None
    prompt_tokens: int
    completion_tokens: int
    precached_tokens: int
    model: str
    created: int


def _number(body: Mapping[str, Any], key: str, *, low: float, low_open: bool,
            high: float | None = None) -> None:
    value = body.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestRejected(422, f"{key} must be a number")
    if value < low or (low_open and value == low) or (high is not None and value > high):
        bound = f"> {low}" if low_open else f">= {low}"
        upper = f" and <= {high}" if high is not None else ""
        raise RequestRejected(422, f"{key} must be {bound}{upper}")


def _integer(body: Mapping[str, Any], key: str, *, low: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise RequestRejected(422, f"{key} must be an integer >= {low}")
    return value


def _options(options: Mapping[str, Any]) -> tuple[int | None, int]:
    """Checks the sampling options; returns (max_tokens, n)."""
    _number(options, "temperature", low=0.0, low_open=True)
    _number(options, "top_p", low=0.0, low_open=False, high=1.0)
    _number(options, "repetition_penalty", low=0.0, low_open=True)
    max_tokens = _integer(options, "max_tokens", low=1)
    n = _integer(options, "n", low=1) or 1
    if n > 4:
        raise RequestRejected(422, "n must be <= 4")
    return max_tokens, n


def _chat_model(body: Mapping[str, Any]) -> ModelSpec:
    name = body.get("model", "GigaChat")
    if not isinstance(name, str):
        raise RequestRejected(422, "model must be a string")
    spec = MODELS.get(name)
    if spec is None or spec.type != "chat":
        raise RequestRejected(404, "No such model")
    return spec


def _functions(raw: Any, call: Any) -> tuple[list[Mapping[str, Any]], str | None]:
    if raw is None:
        if isinstance(call, Mapping):
            raise RequestRejected(422, "function_call names a function but none are given")
        return [], None
    if not isinstance(raw, list) or not all(
        isinstance(f, Mapping) and isinstance(f.get("name"), str) for f in raw
    ):
        raise RequestRejected(422, "functions must be a list of objects with a name")
    if call is None or call in ("auto", "none"):
        return raw, call
    if isinstance(call, Mapping) and any(f["name"] == call.get("name") for f in raw):
        return raw, str(call["name"])
    raise RequestRejected(422, "function_call must be 'auto', 'none' or {name} of a function")


def _messages(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The request's messages, each a mapping with a known role (both request shapes)."""
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise RequestRejected(422, "messages must be a non-empty list")
    for message in raw:
        if not isinstance(message, Mapping) or message.get("role") not in ROLES:
            raise RequestRejected(422, f"role must be one of {', '.join(sorted(ROLES))}")
    return raw


def parse_legacy(body: Mapping[str, Any]) -> ChatRequest:
    """A `/api/v1/chat/completions` body; RequestRejected for anything the API refuses."""
    model = _chat_model(body)
    messages = []
    for message in _messages(body):
        text = message.get("content", "")
        if not isinstance(text, str):
            raise RequestRejected(422, "content must be a string")
        messages.append((str(message["role"]), text))
    max_tokens, n = _options(body)
    functions, call = _functions(body.get("functions"), body.get("function_call"))
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestRejected(422, "stream must be a boolean")
    return ChatRequest(model, messages, functions, call, max_tokens, n, stream)


def parse_primary(body: Mapping[str, Any]) -> ChatRequest:
    """A `/api/v2/chat/completions` body (content parts, model_options, tools)."""
    model = _chat_model(body)
    messages = []
    for message in _messages(body):
        parts = message.get("content") or []
        if isinstance(parts, str):
            parts = [{"text": parts}]
        if not isinstance(parts, list) or not all(isinstance(p, Mapping) for p in parts):
            raise RequestRejected(422, "content must be a list of parts")
        text = "".join(str(p.get("text") or "") for p in parts)
        messages.append((str(message["role"]), text))
    options = body.get("model_options") or {}
    if not isinstance(options, Mapping):
        raise RequestRejected(422, "model_options must be an object")
    max_tokens, n = _options(options)
    specs: list[Any] = []
    for tool in body.get("tools") or []:
        if isinstance(tool, Mapping) and isinstance(tool.get("functions"), Mapping):
            specs.extend(tool["functions"].get("specifications") or [])
    config = body.get("tool_config") or {}
    call: Any = None
    if isinstance(config, Mapping):
        if config.get("function_name"):
            call = {"name": config["function_name"]}
        elif config.get("mode") in ("auto", "none"):
            call = config["mode"]
    functions, forced = _functions(specs or None, call)
    return ChatRequest(model, messages, functions, forced, max_tokens, n, bool(body.get("stream")))


class PrefixCache:
    """Per-session prompt prefixes: messages a session sent before within `ttl` seconds are
    served from cache (precached_prompt_tokens), counted in whole messages."""

    def __init__(self) -> None:
        self._sessions: collections.OrderedDict[str, tuple[float, list[bytes]]] = (
            collections.OrderedDict()
        )

    def hit(self, session: str, keys: list[bytes], now: float, ttl: float) -> int:
        """How many leading messages of `keys` this session sent within the TTL; remembers
        `keys` as the session's latest prompt."""
        previous = self._sessions.pop(session, None)
        shared = 0
        if previous is not None and previous[0] > now:
            for old, new in zip(previous[1], keys, strict=False):
                if old != new:
                    break
                shared += 1
        self._sessions[session] = (now + ttl, keys)
        if len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return shared


def prompt_tokens(request: ChatRequest) -> tuple[int, list[int]]:
    """Billed prompt size: per message count + MESSAGE_OVERHEAD, plus the functions' JSON."""
    per_message = [count_tokens(text) + MESSAGE_OVERHEAD for _, text in request.messages]
    functions = count_tokens(orjson.dumps(request.functions).decode()) if request.functions else 0
    return sum(per_message) + functions, per_message


def complete(
    request: ChatRequest,
    config: EmulatorConfig,
    cache: PrefixCache,
    session: str | None,
    now: float,
) -> ChatOutcome:
    """The emulated model's answer (see batch.emulator.content for the functions)."""
    total_prompt, per_message = prompt_tokens(request)
    if total_prompt > request.model.limit_for(config):
        raise RequestRejected(
            413, f"Prompt of {total_prompt} tokens exceeds the context window of the model"
        )
    precached = 0
    if session is not None:
        keys = [hashlib.blake2b(f"{r}\0{t}".encode(), digest_size=12).digest()
                for r, t in request.messages]
        shared = cache.hit(session, keys, now, config.cache_ttl_s)
        # The last message is the new question: it is never served from cache.
        precached = sum(per_message[: min(shared, len(keys) - 1)])
    last_user = next((t for r, t in reversed(request.messages) if r == "user"), "")
    call: dict[str, Any] | None = None
    if content.is_blacklisted([t for _, t in request.messages], config.blacklist):
        text, reason = content.BLACKLIST_ANSWER, "blacklist"
        completion = count_tokens(text)
    elif request.functions and request.function_call != "none":
        call = content.function_call(request.functions, request.function_call, last_user)
        text, reason = "", "function_call"
        completion = count_tokens(orjson.dumps(call).decode())
    else:
        key = orjson.dumps(request.messages)
        wanted = content.answer_length(
            last_user, key, config.answer_tokens_min, config.answer_tokens_max
        )
        reason = "stop"
        if request.max_tokens is not None and wanted > request.max_tokens:
            wanted, reason = request.max_tokens, "length"
        text = content.answer_text(last_user, wanted)
        completion = wanted
    return ChatOutcome(
        text=text,
        finish_reason=reason,
        function_call=call,
        prompt_tokens=total_prompt - precached,
        completion_tokens=completion * request.n,
        precached_tokens=precached,
        model=request.model.versioned,
        created=int(now),
    )


def _legacy_message(outcome: ChatOutcome) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": outcome.text}
    if outcome.function_call is not None:
        message["function_call"] = outcome.function_call
        message["functions_state_id"] = hashlib.md5(
            orjson.dumps(outcome.function_call), usedforsecurity=False
        ).hexdigest()
    return message


def _legacy_usage(outcome: ChatOutcome) -> dict[str, int]:
    return {
        "prompt_tokens": outcome.prompt_tokens,
        "completion_tokens": outcome.completion_tokens,
        "total_tokens": outcome.prompt_tokens + outcome.completion_tokens,
        "precached_prompt_tokens": outcome.precached_tokens,
    }


def legacy_body(outcome: ChatOutcome, n: int) -> bytes:
    message = _legacy_message(outcome)
    return orjson.dumps({
        "choices": [
            {"message": message, "index": i, "finish_reason": outcome.finish_reason}
            for i in range(n)
        ],
        "created": outcome.created,
        "model": outcome.model,
        "object": "chat.completion",
        "usage": _legacy_usage(outcome),
    })


def _pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [
        " ".join(words[i : i + WORDS_PER_CHUNK]) + (" " if i + WORDS_PER_CHUNK < len(words) else "")
        for i in range(0, len(words), WORDS_PER_CHUNK)
    ] or [""]


def legacy_frames(outcome: ChatOutcome) -> list[bytes]:
    """SSE frames of a streamed answer: deltas, a last chunk with usage, then [DONE]."""
    pieces = _pieces(outcome.text)
    frames = []
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        delta: dict[str, Any] = {"content": piece}
        if i == 0:
            delta["role"] = "assistant"
        if last and outcome.function_call is not None:
            delta["function_call"] = outcome.function_call
        chunk: dict[str, Any] = {
            "choices": [{"delta": delta, "index": 0}],
            "created": outcome.created,
            "model": outcome.model,
            "object": "chat.completion",
        }
        if last:
            chunk["choices"][0]["finish_reason"] = outcome.finish_reason
            chunk["usage"] = _legacy_usage(outcome)
        frames.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
    frames.append(b"data: [DONE]\n\n")
    return frames


def _primary_usage(outcome: ChatOutcome) -> dict[str, Any]:
    return {
        "input_tokens": outcome.prompt_tokens,
        "input_tokens_details": {"cached_tokens": outcome.precached_tokens},
        "output_tokens": outcome.completion_tokens,
        "total_tokens": outcome.prompt_tokens + outcome.completion_tokens,
    }


def _primary_message(outcome: ChatOutcome, text: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": [{"text": text}]}
    if outcome.function_call is not None:
        message["content"] = [{"function_call": outcome.function_call}]
        message["function_call"] = outcome.function_call
    return message


def primary_body(outcome: ChatOutcome, message_id: str) -> bytes:
    message = _primary_message(outcome, outcome.text)
    message["finish_reason"] = outcome.finish_reason
    return orjson.dumps({
        "model": outcome.model,
        "created_at": outcome.created,
        "message_id": message_id,
        "messages": [message],
        "finish_reason": outcome.finish_reason,
        "usage": _primary_usage(outcome),
    })


def primary_frames(outcome: ChatOutcome, message_id: str) -> list[bytes]:
    """Named SSE events of a streamed primary answer; the last carries finish and usage."""
    frames = []
    for piece in _pieces(outcome.text):
        event = {"model": outcome.model, "created_at": outcome.created, "message_id": message_id,
                 "messages": [{"role": "assistant", "content": [{"text": piece}]}]}
        frames.append(b"event: response.message.delta\ndata: " + orjson.dumps(event) + b"\n\n")
    done = {
        "model": outcome.model,
        "created_at": outcome.created,
        "message_id": message_id,
        "finish_reason": outcome.finish_reason,
        "usage": _primary_usage(outcome),
    }
    if outcome.function_call is not None:
        done["messages"] = [_primary_message(outcome, "")]
    frames.append(b"event: response.message.done\ndata: " + orjson.dumps(done) + b"\n\n")
    return frames
