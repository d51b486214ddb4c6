"""The GigaChat wire format as pure functions: build a request, parse an answer.

No I/O here. Builders return an `ApiRequest` (method, path or URL, headers, body); parsers take
an `httpx.Response` whose body is already read and return `batch.api_types` values, or raise
the `batch.errors` class the answer means. The client is the thin layer that sends them.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlencode

import httpx
import orjson

from batch.api_types import (
    AccessToken,
    BalanceEntry,
    ChatCompletion,
    EmbeddingItem,
    Embeddings,
    ModelInfo,
    TokenCount,
    Usage,
)
from batch.errors import (
    ApiError,
    AuthenticationFailed,
    PermanentError,
    ServerError,
    error_from_response,
    error_in_success_body,
)

DEFAULT_CHAT_MODEL = "GigaChat"
JSON = "application/json"
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ApiRequest:
    """One request before it is sent: `url` is a path under the base URL or an absolute URL.
    `headers` may hold a secret (OAuth's Basic key), so they stay out of repr()."""

    method: str
    url: str
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)


def _json_request(method: str, url: str, payload: Any) -> ApiRequest:
    return ApiRequest(method, url, orjson.dumps(payload), {"Content-Type": JSON})


def chat_request(body: Mapping[str, Any], *, default_model: str | None = None) -> ApiRequest:
    """POST /chat/completions; a batch runner wants whole answers, so `stream` is forced off."""
    payload = dict(body)
    payload["stream"] = False
    payload.setdefault("model", default_model or DEFAULT_CHAT_MODEL)
    return _json_request("POST", "/chat/completions", payload)


def embeddings_request(inputs: Sequence[str], model: str) -> ApiRequest:
    return _json_request("POST", "/embeddings", {"model": model, "input": list(inputs)})


def tokens_count_request(inputs: Sequence[str], model: str) -> ApiRequest:
    return _json_request("POST", "/tokens/count", {"model": model, "input": list(inputs)})


def models_request() -> ApiRequest:
    return ApiRequest("GET", "/models")


def balance_request() -> ApiRequest:
    return ApiRequest("GET", "/balance")


def oauth_request(auth_url: str, credentials: str, scope: str) -> ApiRequest:
    """POST {auth_url}: Basic authorization key, a fresh uuid4 RqUID per attempt, form scope."""
    return ApiRequest(
        "POST",
        auth_url,
        urlencode({"scope": scope}).encode(),
        {
            "Authorization": f"Basic {credentials}",
            "RqUID": str(uuid.uuid4()),
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": JSON,
        },
    )


def password_token_request(user: str, password: str) -> ApiRequest:
    """POST {base_url}/token with HTTP Basic user:password (the SDK's third way in)."""
    pair = base64.b64encode(f"{user}:{password}".encode()).decode()
    return ApiRequest("POST", "/token", None, {"Authorization": f"Basic {pair}", "Accept": JSON})


def _request_id(response: httpx.Response) -> str | None:
    value: str | None = response.headers.get("x-request-id")
    return value


def malformed(response: httpx.Response, what: str) -> ServerError:
    """The error for an answer that is not of its endpoint's shape (`what` says which)."""
    # An answer we cannot read is treated like a server fault: it may well be transient.
    return ServerError(
        f"malformed answer: {what}", status=response.status_code, request_id=_request_id(response)
    )


def json_payload(response: httpx.Response, payload_keys: tuple[str, ...]) -> Any:
    """The decoded JSON of a success, or the error the answer really is (a non-2xx status, or
    a 200 carrying `{status, message}` and none of `payload_keys`)."""
    if not 200 <= response.status_code < 300:
        raise error_from_response(response.status_code, response.headers, response.content)
    try:
        data = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise malformed(response, "not JSON") from None
    if error_in_success_body(data, payload_keys=payload_keys):
        raise error_from_response(response.status_code, response.headers, response.content)
    return data


def _usage(data: Any) -> Usage | None:
    """An answer's usage; None when it is missing or malformed (the answer itself is fine,
    but what it was billed is unknown: the engine counts it at its ceiling)."""
    if not isinstance(data, dict):
        return None
    counts = [
        _count(data.get(key, 0))
        for key in ("prompt_tokens", "completion_tokens", "precached_prompt_tokens")
    ]
    if None in counts:
        return None
    prompt, completion, precached = (c or 0 for c in counts)
    return Usage(prompt, completion, precached)


def _count(value: Any) -> int | None:
    """A token count: a non-negative integer (a whole float too), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if value < 0 or value != int(value):
        return None
    return int(value)


def _malformed_body(what: str, request_id: str | None) -> ServerError:
    return ServerError(f"malformed answer: {what}", request_id=request_id)


def chat_from_json(data: Any, request_id: str | None = None) -> ChatCompletion:
    """A chat answer from its decoded JSON body (a batch API result line has the same)."""
    try:
        choice = data["choices"][0]
        message = choice["message"]
        usage = _usage(data.get("usage"))
        return ChatCompletion(
            content=message.get("content") or "",
            finish_reason=str(choice.get("finish_reason") or ""),
            model=str(data.get("model") or ""),
            usage=usage or Usage(),
            usage_known=usage is not None,
            function_call=message.get("function_call"),
            functions_state_id=message.get("functions_state_id"),
            request_id=request_id,
        )
    except (KeyError, IndexError, TypeError, AttributeError, ValueError):
        raise _malformed_body("no choices[0].message in a chat answer", request_id) from None


def _parsed(
    response: httpx.Response,
    payload_keys: tuple[str, ...],
    from_json: Callable[[Any, str | None], T],
) -> T:
    """The answer `from_json` reads in a success body; a malformed one carries the status."""
    data = json_payload(response, payload_keys)
    try:
        return from_json(data, _request_id(response))
    except ServerError as exc:
        raise ServerError(
            exc.message, status=response.status_code, request_id=exc.request_id
        ) from None


def parse_chat(response: httpx.Response) -> ChatCompletion:
    return _parsed(response, ("choices",), chat_from_json)


def embeddings_from_json(data: Any, request_id: str | None = None) -> Embeddings:
    """Embeddings from their decoded JSON body, items in index order."""
    try:
        items = [_embedding_item(item) for item in data["data"]]
    except (KeyError, TypeError, AttributeError, ValueError):
        raise _malformed_body("embedding items need index and embedding", request_id) from None
    items.sort(key=lambda item: item.index)
    return Embeddings(model=str(data.get("model") or ""), items=items, request_id=request_id)


def _embedding_item(item: Any) -> EmbeddingItem:
    usage = item.get("usage")
    tokens = _count(usage.get("prompt_tokens")) if isinstance(usage, dict) else None
    return EmbeddingItem(
        index=int(item["index"]),
        embedding=item["embedding"],
        prompt_tokens=tokens or 0,
        usage_known=tokens is not None,
    )


def parse_embeddings(response: httpx.Response) -> Embeddings:
    return _parsed(response, ("data",), embeddings_from_json)


def parse_tokens_count(response: httpx.Response) -> list[TokenCount]:
    data = json_payload(response, ())
    try:
        return [TokenCount(tokens=int(c["tokens"]), characters=int(c["characters"])) for c in data]
    except (KeyError, TypeError, ValueError):
        raise malformed(response, "tokens/count answers a list of {tokens, characters}") from None


def parse_models(response: httpx.Response) -> list[ModelInfo]:
    data = json_payload(response, ("data",))
    try:
        return [
            ModelInfo(
                id=str(m["id"]),
                type=str(m.get("type") or ""),
                owned_by=str(m.get("owned_by") or ""),
            )
            for m in data["data"]
        ]
    except (KeyError, TypeError, AttributeError):
        raise malformed(response, "models answers {data: [{id, type, owned_by}]}") from None


def parse_balance(response: httpx.Response) -> list[BalanceEntry]:
    data = json_payload(response, ("balance",))
    try:
        return [
            BalanceEntry(usage=str(b["usage"]), value=float(b["value"])) for b in data["balance"]
        ]
    except (KeyError, TypeError, ValueError):
        raise malformed(response, "balance answers {balance: [{usage, value}]}") from None


def _expiry_seconds(value: Any) -> float:
    """`expires_at`/`exp` are unix milliseconds; a value that can only be seconds (before
    year 5138 in ms terms) is taken as seconds rather than as an instantly dead token."""
    number = float(value)
    return number / 1000.0 if number > 1e11 else number


def parse_token(response: httpx.Response) -> AccessToken:
    """The answer of OAuth (`{access_token, expires_at}`) or of /token (`{tok, exp}`).
    Rejected credentials (any non-retryable error) are AuthenticationFailed."""
    try:
        data = json_payload(response, ("access_token", "tok"))
    except PermanentError as exc:
        raise _rejected(exc) from None
    except ApiError as exc:
        if exc.status is not None and exc.status in (401, 403):
            raise _rejected(exc) from None
        raise
    try:
        if "access_token" in data:
            return AccessToken(str(data["access_token"]), _expiry_seconds(data["expires_at"]))
        return AccessToken(str(data["tok"]), _expiry_seconds(data["exp"]))
    except (KeyError, TypeError, ValueError):
        raise malformed(response, "a token answer needs access_token and expires_at") from None


def _rejected(error: ApiError) -> AuthenticationFailed:
    return AuthenticationFailed(
        f"credentials rejected: {error.message}", status=error.status, request_id=error.request_id
    )
