"""Chat jobs: one line is one `/chat/completions` request, one answer is one result row.

A line gives `messages`, or the shorthand `prompt` (sent after the run's `--system` message,
or the line's own `system`). Per-line `model`, `temperature`, `top_p`, `max_tokens`,
`repetition_penalty`, `functions` and `function_call` override the run's defaults; `metadata`
is carried to the output untouched, as JSON text. Requests that share a model, system prompt
and functions share an `X-Session-ID`, so the server's prefix cache serves the repeated
prefix as `precached_prompt_tokens`, which are not billed.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Protocol

import orjson
import pyarrow as pa

from batch import wire
from batch.api_types import ChatCompletion, Usage
from batch.cache.answers import CachedAnswer
from batch.cache.keys import chat_material
from batch.errors import ConfigError
from jobs.base import (
    Batch,
    BilledInput,
    Job,
    JobKind,
    JobOutcome,
    JobResult,
    KindOption,
    KindOptions,
    Problem,
    SourceLocation,
)
from jobs.chat_fields import function_call_setting, function_list, message_list
from jobs.chat_rows import RESULT_SCHEMA, cache_entry, cached_row, chat_result
from jobs.registry import register
from jobs.tokens import text_token_ceiling
from jobs.validation import RecordFields, number_problem, token_limit_problem

DEFAULT_MODEL = wire.DEFAULT_CHAT_MODEL  # what the API answers with when a request names none
# The cap a budgeted run sends as max_tokens for jobs that set none (without --max-completion-
# tokens), so a reservation is a bound: the API itself does not cap answers below the context
# window. Unbudgeted runs send no cap, and reserve/estimate count such answers at this size.
DEFAULT_COMPLETION_RESERVE = 1024
# Context windows in tokens, for refusing at validation a prompt that cannot fit by length
# alone; a model not listed gets the largest, so nothing that might fit is refused.
CONTEXT_WINDOWS: Mapping[str, int] = {
    "GigaChat": 32_768,
    "GigaChat-Pro": 32_768,
    "GigaChat-Max": 32_768,
    "GigaChat-2": 131_072,
    "GigaChat-2-Pro": 131_072,
    "GigaChat-2-Max": 131_072,
}
LARGEST_CONTEXT_WINDOW = max(CONTEXT_WINDOWS.values())
# Tokens a message costs beyond its content (role, separators): a ceiling, well over what
# the API and the emulator charge.
MESSAGE_OVERHEAD_CEILING = 8
# Tokens a chat message is billed beyond its content's /tokens/count (role, separators).
# Measured, not guessed: tests/test_token_counts.py re-measures it on every run through
# gigabatch's client and the official SDK. The real API (the SDK's recorded answers,
# GigaChat:2.0.28.2) adds about 8-9 to a one-message request, more than the emulator's 3:
# under 1% of a 1,000-token prompt, so `estimate --sample N` measures it on the sampled
# answers and corrects the estimate, and `--message-overhead N` sets it by hand.
MESSAGE_OVERHEAD = 3

_FIELDS = (
    "id",
    "messages",
    "prompt",
    "system",
    "model",
    "temperature",
    "top_p",
    "max_tokens",
    "repetition_penalty",
    "functions",
    "function_call",
    "metadata",
)


@dataclass(frozen=True, slots=True)
class ChatOptions(KindOptions):
    """The run's chat defaults (a line's own values win) and its prompt column."""

    system: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    repetition_penalty: float | None = None
    prompt_column: str | None = None


CLI_OPTIONS = (
    KindOption("--system", "system", "Chat: a system message for every job."),
    KindOption("--temperature", "temperature", "Chat: default temperature.", float),
    KindOption("--top-p", "top_p", "Chat: default top_p.", float),
    KindOption(
        "--max-completion-tokens",
        "max_tokens",
        "Chat: default max_tokens of an answer (a job's own max_tokens wins); "
        f"with a budget, {DEFAULT_COMPLETION_RESERVE} unless given.",
        int,
        minimum=1,
    ),
    KindOption(
        "--repetition-penalty", "repetition_penalty", "Chat: default repetition_penalty.", float
    ),
    KindOption("--prompt-column", "prompt_column", "Chat: column holding the prompt."),
)


class ChatClient(Protocol):
    """The part of GigaChatClient chat jobs use."""

    async def chat(
        self, body: Mapping[str, Any], *, session_id: str | None = None
    ) -> ChatCompletion: ...


def _check_options(options: ChatOptions) -> None:
    checks = (
        ("--temperature", options.temperature, {"above": 0.0}),
        ("--top-p", options.top_p, {"at_least": 0.0, "at_most": 1.0}),
        ("--repetition-penalty", options.repetition_penalty, {"above": 0.0}),
    )
    for name, value, limits in checks:
        if value is not None and (problem := number_problem(value, **limits)):
            raise ConfigError(f"{name} {problem}")
    if options.max_tokens is not None and options.max_tokens < 1:
        raise ConfigError(f"--max-tokens must be at least 1, got {options.max_tokens}")
    if options.prompt_column and options.text_column:
        raise ConfigError("give --prompt-column or --text-column for chat jobs, not both")


@register
class ChatKind(JobKind):
    """Chat completions, one request per job."""

    name: ClassVar[str] = "chat"
    options_type: ClassVar[type[KindOptions]] = ChatOptions
    cli_options: ClassVar[tuple[KindOption, ...]] = CLI_OPTIONS
    batch_api_method: ClassVar[str] = "chat_completions"
    summary: ClassVar[str] = "a chat completion"
    keeps_answers: ClassVar[bool] = True
    options: ChatOptions

    def __init__(self, options: ChatOptions | None = None) -> None:
        options = options if options is not None else ChatOptions()
        _check_options(options)
        self.options = options
        self.model = options.model or DEFAULT_MODEL
        self._sources = {name: name for name in _FIELDS}
        if options.id_column:
            self._sources["id"] = options.id_column
        if options.prompt_column or options.text_column:
            self._sources["prompt"] = options.prompt_column or options.text_column or "prompt"

    def source_fields(self) -> Mapping[str, str]:
        return self._sources

    def answer_settings(self) -> Mapping[str, Any]:
        o = self.options
        return {
            "kind": self.name,
            "model": self.model,
            "system": o.system,
            "temperature": o.temperature,
            "top_p": o.top_p,
            "max_tokens": o.max_tokens,
            "repetition_penalty": o.repetition_penalty,
            "columns": dict(self._sources),
        }

    def setting_hints(self) -> Mapping[str, str]:
        return {
            "max_tokens": (
                "the cap on answers of jobs without their own max_tokens: "
                f"--max-completion-tokens, or {DEFAULT_COMPLETION_RESERVE} when a budget "
                "(--max-cost/--max-tokens) is given; resume with the cap the output was made with"
            ),
        }

    def job_from_record(self, record: Mapping[str, Any], location: SourceLocation) -> Job:
        fields = RecordFields(record, location, self._sources)
        job_id = fields.job_id()
        messages = self._messages(fields)
        body: dict[str, Any] = {"model": fields.string("model") or self.model}
        if messages is not None:
            body["messages"] = messages
        o = self.options
        settings: dict[str, float | int | None] = {
            "temperature": _first(fields.number("temperature", above=0.0), o.temperature),
            "top_p": _first(fields.number("top_p", at_least=0.0, at_most=1.0), o.top_p),
            "max_tokens": _first(fields.integer("max_tokens", at_least=1), o.max_tokens),
            "repetition_penalty": _first(
                fields.number("repetition_penalty", above=0.0), o.repetition_penalty
            ),
        }
        body.update({key: value for key, value in settings.items() if value is not None})
        functions = function_list(fields)
        if functions is not None:
            body["functions"] = functions
        function_call = function_call_setting(fields)
        if function_call is not None:
            body["function_call"] = function_call
        fields.check()
        return Job(id=job_id, location=location, request=body, metadata=fields.value("metadata"))

    def _messages(self, fields: RecordFields) -> list[dict[str, Any]] | None:
        if fields.has("messages"):
            if fields.has("prompt"):
                fields.add_problem("prompt", "give either 'messages' or the 'prompt' shorthand")
            if fields.has("system"):
                fields.add_problem(
                    "system", "goes with the 'prompt' shorthand; put a system message in 'messages'"
                )
            return message_list(fields)
        prompt = fields.string("prompt")
        system = fields.string("system") if fields.has("system") else self.options.system
        if prompt is None:
            if not fields.has("prompt"):
                fields.add_problem("prompt", "missing: give 'messages' or 'prompt'")
            return None
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": prompt})
        return messages

    def size_problems(self, job: Job) -> list[Problem]:
        """A prompt that certainly exceeds its model's context window (jobs.validation)."""
        model = str(job.request.get("model"))
        window = CONTEXT_WINDOWS.get(model, LARGEST_CONTEXT_WINDOW)
        texts = [m.get("content") or "" for m in job.request.get("messages", ())]
        return token_limit_problem(job.location, None, texts, window, "context window", model)

    def packer(self) -> SinglePacker:
        return SinglePacker()

    def bounded(self) -> ChatKind:
        """This kind sending max_tokens on every request: --max-completion-tokens where
        given, else DEFAULT_COMPLETION_RESERVE (a job's own max_tokens still wins)."""
        if self.options.max_tokens is not None:
            return self
        return ChatKind(replace(self.options, max_tokens=DEFAULT_COMPLETION_RESERVE))

    def reserve(self, batch: Batch) -> Usage:
        prompt = completion = 0
        for job in batch.jobs:
            prompt += prompt_ceiling(job.request)
            completion += job.request.get("max_tokens") or DEFAULT_COMPLETION_RESERVE
        return Usage(prompt_tokens=prompt, completion_tokens=completion)

    def request_body(self, batch: Batch) -> dict[str, Any]:
        (job,) = batch.jobs
        return dict(job.request)

    def outcomes(self, batch: Batch, body: Mapping[str, Any]) -> Sequence[JobOutcome]:
        (job,) = batch.jobs
        return [chat_result(job, wire.chat_from_json(body))]

    async def send(self, client: ChatClient, batch: Batch) -> Sequence[JobOutcome]:
        (job,) = batch.jobs
        body = self.request_body(batch)
        return [chat_result(job, await client.chat(body, session_id=session_id(body)))]

    def billed_input(self, job: Job, *, message_overhead: int | None = None) -> BilledInput:
        """Each message's content, then the functions as one JSON text (the list as the
        request carries it, so its brackets and commas count too), plus the per-message
        overhead; the answer is bounded by max_tokens."""
        request = job.request
        messages = request.get("messages") or ()
        texts = [str(m.get("content") or "") for m in messages]
        functions = request.get("functions")
        if functions:
            texts.append(orjson.dumps(functions).decode())
        per_message = MESSAGE_OVERHEAD if message_overhead is None else message_overhead
        session = session_id(request)
        return BilledInput(
            model=str(request.get("model") or self.model),
            texts=tuple(t for t in texts if t),
            overhead=per_message * len(messages),
            messages=len(messages),
            session=session,
            # The prompt cache works per session: without one there is no prefix to find.
            message_keys=tuple(message_keys(request)) if session else (),
            message_texts=tuple(texts[: len(messages)]) if session else (),
            output_bound=request.get("max_tokens") or DEFAULT_COMPLETION_RESERVE,
            default_bound=request.get("max_tokens") is None,
        )

    def input_note(self, message_overhead: int | None = None) -> str:
        per_message = MESSAGE_OVERHEAD if message_overhead is None else message_overhead
        return (
            f"chat input includes {per_message} tokens per message that the API "
            "bills beyond /tokens/count (role and separators; --message-overhead)"
        )

    def output_bound_note(self, rows_defaulted: int) -> str:
        return (
            f"{rows_defaulted:,} rows without max_tokens counted at "
            f"{DEFAULT_COMPLETION_RESERVE}, the cap a budgeted run sends (a run without a "
            "budget does not cap them)"
        )

    def cache_material(self, job: Job) -> bytes:
        """The model, every message, the functions and every answer-affecting parameter."""
        return chat_material(job.request)

    def cache_entry(self, outcome: JobResult) -> CachedAnswer:
        return cache_entry(outcome)

    def cached_row(self, job: Job, answer: CachedAnswer) -> JobResult:
        return cached_row(job, answer)

    def result_schema(self) -> pa.Schema:
        return RESULT_SCHEMA


class SinglePacker:
    """One job per request: chat has no batching in its API."""

    def add(self, job: Job) -> list[Batch]:
        return [Batch(jobs=[job])]

    def flush(self) -> list[Batch]:
        return []


def session_id(body: Mapping[str, Any]) -> str | None:
    """A stable X-Session-ID for requests sharing a model, system prompt and functions, so
    they land on the server's prefix cache; None when there is no system prompt to share."""
    messages = body.get("messages") or ()
    if not messages or messages[0].get("role") != "system":
        return None
    key = orjson.dumps([body.get("model"), messages[0].get("content"), body.get("functions")])
    return str(uuid.UUID(bytes=hashlib.blake2b(key, digest_size=16).digest()))


def message_keys(request: Mapping[str, Any]) -> list[bytes]:
    """One digest per message (role and content), to find the prefix two requests share."""
    return [
        hashlib.blake2b(
            f"{m.get('role')}\0{m.get('content') or ''}".encode(), digest_size=12
        ).digest()
        for m in request.get("messages") or ()
    ]


def prompt_ceiling(body: Mapping[str, Any]) -> int:
    """The most `body`'s prompt can be billed: every message's content at a token per
    character, its other fields (name, function_call...) as JSON likewise, plus a per-message
    overhead; then the functions' JSON and the function_call setting."""
    tokens = 0
    for message in body.get("messages", ()):
        tokens += text_token_ceiling(message.get("content") or "") + MESSAGE_OVERHEAD_CEILING
        extra = {k: v for k, v in message.items() if k not in ("role", "content")}
        if extra:
            tokens += text_token_ceiling(orjson.dumps(extra).decode())
    for key in ("functions", "function_call"):
        if key in body:
            tokens += text_token_ceiling(orjson.dumps(body[key]).decode())
    return tokens


def _first(line_value: float | int | None, default: float | int | None) -> float | int | None:
    return line_value if line_value is not None else default
