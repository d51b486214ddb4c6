"""The emulator's knobs (`EmulatorConfig`) and the named profiles built from them.

Every field is a knob: the CLI turns each into an option and `POST /_emulator/config`
changes the runtime ones while the server runs. Help texts live next to the fields.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

SCOPES = ("GIGACHAT_API_PERS", "GIGACHAT_API_B2B", "GIGACHAT_API_CORP")
# Concurrent streams the real service allows per scope unless raised on request.
SCOPE_STREAM_LIMITS = {"GIGACHAT_API_PERS": 1, "GIGACHAT_API_B2B": 10, "GIGACHAT_API_CORP": 10}
RETRY_AFTER_STYLES = ("none", "seconds", "date")
BATCH_LIST_SHAPES = ("object", "array")
# What an API request gets during a scheduled outage: its connection closed with no answer,
# or a 503 from the front proxy.
OUTAGE_MODES = ("drop", "503")


def _knob(default: Any, help: str, *, runtime: bool = True) -> Any:
    return field(default=default, metadata={"help": help, "runtime": runtime})


@dataclass
class EmulatorConfig:
    """Everything the emulator can be told; defaults are the `b2b` profile."""

    host: str = _knob("127.0.0.1", "Interface to bind (loopback by default).", runtime=False)
    port: int = _knob(0, "Port to bind; 0 picks a free one.", runtime=False)
    client_id: str = _knob(
        "gigabatch-emulator", "OAuth client id inside the authorization key.", runtime=False
    )
    client_secret: str = _knob(
        "emulator-test-secret", "OAuth client secret inside the authorization key.", runtime=False
    )
    user: str = _knob("emulator", "User name accepted by POST /api/v1/token.", runtime=False)
    password: str = _knob(
        "emulator-password", "Password accepted by POST /api/v1/token.", runtime=False
    )
    scope: str = _knob("GIGACHAT_API_B2B", "The scope the authorization key is good for.")
    stream_limit: int | None = _knob(
        None, "Concurrent requests per scope before 429 (default: PERS 1, B2B/CORP 10)."
    )
    token_ttl_s: float = _knob(1800.0, "Access token lifetime in seconds (real: 30 min).")
    oauth_rate_per_s: float = _knob(10.0, "OAuth requests allowed per second before 429.")
    retry_after: str = _knob("seconds", "Retry-After on 429: none | seconds | date.")
    retry_after_s: float = _knob(1.0, "Seconds announced in Retry-After for a stream-limit 429.")
    latency_base_ms: float = _knob(100.0, "Fixed part of every answer's latency, ms.")
    latency_per_prompt_token_ms: float = _knob(0.01, "Latency per prompt token, ms.")
    latency_per_completion_token_ms: float = _knob(2.0, "Latency per completion token, ms.")
    latency_jitter: float = _knob(
        0.2, "Relative jitter: latency is scaled by a seeded uniform factor in 1 ± jitter."
    )
    answer_tokens_min: int = _knob(
        16, "Shortest chat answer (tokens) when the prompt has no [[answer_tokens=N]] directive."
    )
    answer_tokens_max: int = _knob(64, "Longest chat answer (tokens) without a directive.")
    context_window: int | None = _knob(
        None, "Prompt tokens allowed for every chat model (default: per model, 32768/131072)."
    )
    embedding_input_limit: int | None = _knob(
        None, "Tokens allowed per embedding text (default: 512, EmbeddingsGigaR 4096)."
    )
    blacklist: tuple[str, ...] = _knob(
        ("forbidden-topic",), "Words that make a chat answer finish with 'blacklist'."
    )
    cache_ttl_s: float = _knob(
        30.0, "How long a session's prompt prefix stays cached (precached_prompt_tokens)."
    )
    balance_tokens: int | None = _knob(
        100_000_000, "Prepaid tokens per pool (chat, embeddings); 0 -> 402; unset -> 403."
    )
    fault_5xx: float = _knob(0.0, "Rate of 500/503 answers with a JSON body.")
    fault_html_502: float = _knob(0.0, "Rate of 502 answers carrying an nginx HTML page.")
    fault_reset: float = _knob(0.0, "Rate of connections closed half-way through the body.")
    fault_hang: float = _knob(
        0.0, "Rate of requests that get no answer until the client gives up (or hang_s)."
    )
    hang_s: float = _knob(5.0, "How long a hang lasts before a 504 (bounds test time).")
    fault_error_body: float = _knob(0.0, "Rate of HTTP 200 answers carrying a 429 error body.")
    fault_storm: float = _knob(0.0, "Rate at which a request starts a 429 storm.")
    storm_s: float = _knob(2.0, "How long a 429 storm refuses every API request, seconds.")
    batch_processing_s: float = _knob(
        2.0, "Seconds a /batches file takes to complete (its first tenth 'created')."
    )
    batch_max_lines: int = _knob(500, "Task lines allowed per /batches file (real: 500).")
    batch_list_shape: str = _knob(
        "object", "GET /batches answers: object ({batches: [...]}, the spec) | array (Java)."
    )
    batch_task_failure_rate: float = _knob(
        0.0, "Seeded rate of batch tasks answered with a 500 error line."
    )
    batch_poll_429_rate: float = _knob(0.0, "Rate of GET /batches polls answered 429.")
    fault_429: float = _knob(
        0.0, "Rate of isolated 429s without Retry-After (not caused by the stream limit)."
    )
    fault_401: float = _knob(
        0.0, "Rate of API requests refused with 401 'Token has expired' (tokens over 1 s old)."
    )
    fault_drip: float = _knob(0.0, "Rate of answers trickled one byte per drip_ms.")
    drip_ms: float = _knob(50.0, "Milliseconds between the bytes of a slow-drip answer.")
    fault_oauth_429: float = _knob(
        0.0, "Rate of OAuth token requests refused with 429 without Retry-After."
    )
    payment_after: int | None = _knob(
        None, "After this many answered API requests, every API request answers 402."
    )
    outage_start_s: float | None = _knob(
        None, "Seconds after the server starts when a scheduled outage begins (unset: none)."
    )
    outage_s: float = _knob(60.0, "How long a scheduled outage lasts, seconds.")
    outage_mode: str = _knob(
        "drop", "What API requests get in an outage: drop (connection closed, no answer) | 503."
    )
    seed: int = _knob(0, "Seed of the latency jitter, the faults and the answer lengths.")

    def __post_init__(self) -> None:
        self.blacklist = tuple(self.blacklist)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError on a knob no server could honour."""
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}")
        if self.retry_after not in RETRY_AFTER_STYLES:
            raise ValueError(f"retry_after must be one of {', '.join(RETRY_AFTER_STYLES)}")
        if self.stream_limit is not None and self.stream_limit < 1:
            raise ValueError("stream_limit must be at least 1")
        if not 1 <= self.answer_tokens_min <= self.answer_tokens_max:
            raise ValueError("need 1 <= answer_tokens_min <= answer_tokens_max")
        if not 0 <= self.latency_jitter < 1:
            raise ValueError("latency_jitter must be in [0, 1)")
        if self.batch_list_shape not in BATCH_LIST_SHAPES:
            raise ValueError(f"batch_list_shape must be one of {', '.join(BATCH_LIST_SHAPES)}")
        if self.batch_max_lines < 1 or self.batch_processing_s < 0:
            raise ValueError("need batch_max_lines >= 1 and batch_processing_s >= 0")
        if self.outage_mode not in OUTAGE_MODES:
            raise ValueError(f"outage_mode must be one of {', '.join(OUTAGE_MODES)}")
        for name in ("fault_5xx", "fault_html_502", "fault_reset", "fault_hang",
                     "fault_error_body", "fault_storm", "fault_429", "fault_401", "fault_drip",
                     "fault_oauth_429", "batch_task_failure_rate", "batch_poll_429_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a rate in [0, 1]")

    @property
    def effective_stream_limit(self) -> int:
        """The concurrency limit a token of `scope` gets."""
        return self.stream_limit or SCOPE_STREAM_LIMITS[self.scope]

    def mean_latency_s(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Mean latency of one request (jitter is symmetric, so it averages out)."""
        return (
            self.latency_base_ms
            + self.latency_per_prompt_token_ms * prompt_tokens
            + self.latency_per_completion_token_ms * completion_tokens
        ) / 1000.0

    def ceiling_rps(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Throughput ceiling in requests/s: stream limit / mean latency (inf at zero latency)."""
        mean = self.mean_latency_s(prompt_tokens, completion_tokens)
        return float("inf") if mean <= 0 else self.effective_stream_limit / mean

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (for the subprocess mode and the config endpoint)."""
        data = dataclasses.asdict(self)
        data["blacklist"] = list(self.blacklist)
        return data

    def replace(self, **knobs: Any) -> EmulatorConfig:
        """A copy with `knobs` changed; unknown or mistyped knobs raise ValueError."""
        return dataclasses.replace(self, **coerce_knobs(knobs))


def knob_fields() -> list[dataclasses.Field[Any]]:
    """The knobs in declaration order."""
    return list(dataclasses.fields(EmulatorConfig))


def knob_types() -> dict[str, Any]:
    """Resolved type of every knob (annotations are strings under __future__ annotations)."""
    return typing.get_type_hints(EmulatorConfig)


def _coerce(name: str, value: Any, hint: Any) -> Any:
    if typing.get_origin(hint) is tuple:
        return tuple(str(v) for v in ([value] if isinstance(value, str) else value))
    args = typing.get_args(hint)
    if value is None:
        if type(None) in args:
            return None
        raise ValueError(f"{name} cannot be null")
    base = next((a for a in args if a is not type(None)), hint)
    if isinstance(value, bool) and base is not bool:
        raise ValueError(f"{name} must be a {base.__name__}")
    if base is int:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{name} must be an integer")
        return int(value)
    if base is float:
        return float(value)
    return str(value)


def coerce_knobs(knobs: dict[str, Any]) -> dict[str, Any]:
    """Check names and types of `knobs` (JSON values) against EmulatorConfig."""
    hints = knob_types()
    unknown = sorted(set(knobs) - set(hints))
    if unknown:
        raise ValueError(f"unknown emulator knob(s): {', '.join(unknown)}")
    try:
        return {name: _coerce(name, value, hints[name]) for name, value in knobs.items()}
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from None


_FLAKY = {
    "fault_5xx": 0.03,
    "fault_html_502": 0.02,
    "fault_reset": 0.02,
    "fault_hang": 0.01,
    "fault_error_body": 0.02,
    "hang_s": 5.0,
}

PROFILES: dict[str, dict[str, Any]] = {
    # One stream, slower answers: an individual's account.
    "pers": {
        "scope": "GIGACHAT_API_PERS",
        "latency_base_ms": 200.0,
        "latency_per_completion_token_ms": 5.0,
    },
    "b2b": {"scope": "GIGACHAT_API_B2B"},
    "corp": {"scope": "GIGACHAT_API_CORP"},
    # b2b that now and then refuses everything for two seconds, announcing when to return.
    "storm": {"scope": "GIGACHAT_API_B2B", "fault_storm": 0.02, "storm_s": 2.0},
    # b2b with every transport fault at a few percent.
    "flaky": {"scope": "GIGACHAT_API_B2B", **_FLAKY},
    # No latency and a limit nobody reaches: measures the client or the server itself.
    "fast": {
        "scope": "GIGACHAT_API_CORP",
        "stream_limit": 10_000,
        "latency_base_ms": 0.0,
        "latency_per_prompt_token_ms": 0.0,
        "latency_per_completion_token_ms": 0.0,
        "latency_jitter": 0.0,
    },
}


def profile(name: str, **overrides: Any) -> EmulatorConfig:
    """The named profile's config with `overrides` applied (see PROFILES)."""
    try:
        base = PROFILES[name]
    except KeyError:
        raise ValueError(
            f"unknown emulator profile {name!r}; choose one of {', '.join(PROFILES)}"
        ) from None
    return EmulatorConfig(**coerce_knobs({**base, **overrides}))
