"""batch.wire: building requests and parsing answers, no network involved."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import httpx
import orjson
import pytest

from batch import wire
from batch.api_types import BalanceEntry, ModelInfo, TokenCount, Usage
from batch.errors import AuthenticationFailed, RateLimited, ServerError


def answer(status: int, payload: Any, request_id: str | None = "rid-1") -> httpx.Response:
    headers = {"X-Request-ID": request_id} if request_id else {}
    content = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return httpx.Response(status, content=content, headers=headers)


# --- builders ------------------------------------------------------------------------------


def test_chat_request_forces_stream_off_and_keeps_every_other_field() -> None:
    body = {"model": "GigaChat-Max", "messages": [], "stream": True, "max_tokens": 9}
    request = wire.chat_request(body)
    assert (request.method, request.url) == ("POST", "/chat/completions")
    assert orjson.loads(request.body or b"") == {**body, "stream": False}
    assert body["stream"] is True  # the caller's body is not touched


def test_chat_request_fills_in_the_default_model_only_when_missing() -> None:
    assert orjson.loads(wire.chat_request({"messages": []}).body or b"")["model"] == "GigaChat"
    named = wire.chat_request({"messages": []}, default_model="GigaChat-Pro")
    assert orjson.loads(named.body or b"")["model"] == "GigaChat-Pro"


def test_embeddings_request_sends_many_inputs_at_once() -> None:
    request = wire.embeddings_request(("a", "b"), "EmbeddingsGigaR")
    assert request.url == "/embeddings"
    assert orjson.loads(request.body or b"") == {"model": "EmbeddingsGigaR", "input": ["a", "b"]}
    assert request.headers["Content-Type"] == "application/json"


def test_tokens_count_request_shape() -> None:
    request = wire.tokens_count_request(["x"], "GigaChat")
    assert request.url == "/tokens/count"
    assert orjson.loads(request.body or b"") == {"model": "GigaChat", "input": ["x"]}


def test_oauth_request_has_basic_key_uuid4_rquid_and_form_scope() -> None:
    request = wire.oauth_request("https://auth/api/v2/oauth", "S0VZ", "GIGACHAT_API_B2B")
    assert request.url == "https://auth/api/v2/oauth"
    assert request.headers["Authorization"] == "Basic S0VZ"
    assert uuid.UUID(request.headers["RqUID"]).version == 4
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert request.body == b"scope=GIGACHAT_API_B2B"


def test_each_oauth_request_gets_a_fresh_rquid() -> None:
    first = wire.oauth_request("u", "k", "s").headers["RqUID"]
    assert first != wire.oauth_request("u", "k", "s").headers["RqUID"]


def test_password_token_request_is_http_basic_to_token() -> None:
    request = wire.password_token_request("alice", "pw")
    assert (request.method, request.url) == ("POST", "/token")
    scheme, encoded = request.headers["Authorization"].split()
    assert scheme == "Basic"
    assert base64.b64decode(encoded) == b"alice:pw"


def test_request_repr_hides_headers_that_may_hold_a_key() -> None:
    assert "SECRETKEY" not in repr(wire.oauth_request("u", "SECRETKEY", "s"))


# --- parsers -------------------------------------------------------------------------------

CHAT = {
    "choices": [
        {
            "message": {"role": "assistant", "content": "Привет"},
            "index": 0,
            "finish_reason": "stop",
        }
    ],
    "created": 1768996171,
    "model": "GigaChat:2.0.28.2",
    "object": "chat.completion",
    "usage": {
        "prompt_tokens": 17,
        "completion_tokens": 3,
        "total_tokens": 20,
        "precached_prompt_tokens": 2,
    },
}


def test_parse_chat_reads_content_reason_model_version_usage_and_request_id() -> None:
    result = wire.parse_chat(answer(200, CHAT))
    assert result.content == "Привет"
    assert result.finish_reason == "stop"
    assert result.model == "GigaChat:2.0.28.2"
    assert result.usage == Usage(17, 3, 2)
    assert result.request_id == "rid-1"


def test_parse_chat_keeps_a_function_call() -> None:
    message = {
        "role": "assistant",
        "content": "",
        "function_call": {"name": "weather", "arguments": {"city": "Moscow"}},
        "functions_state_id": "fs-1",
    }
    payload = {**CHAT, "choices": [{"message": message, "finish_reason": "function_call"}]}
    result = wire.parse_chat(answer(200, payload))
    assert result.function_call == {"name": "weather", "arguments": {"city": "Moscow"}}
    assert result.functions_state_id == "fs-1"
    assert result.finish_reason == "function_call"


def test_parse_chat_blacklist_is_an_outcome_not_an_error() -> None:
    payload = {**CHAT, "choices": [{"message": {"content": "…"}, "finish_reason": "blacklist"}]}
    assert wire.parse_chat(answer(200, payload)).finish_reason == "blacklist"


def test_parse_chat_200_with_status_body_raises_the_error_it_carries() -> None:
    with pytest.raises(RateLimited):
        wire.parse_chat(answer(200, {"status": 429, "message": "Too many requests"}))


def test_parse_chat_without_choices_is_a_malformed_answer() -> None:
    with pytest.raises(ServerError, match="malformed") as info:
        wire.parse_chat(answer(200, {"choices": []}))
    assert info.value.request_id == "rid-1"


def test_a_200_that_is_not_json_is_a_retryable_malformed_answer() -> None:
    with pytest.raises(ServerError, match="not JSON"):
        wire.parse_models(answer(200, b"<html>maintenance</html>"))


def test_parse_embeddings_orders_items_by_index() -> None:
    payload = {
        "object": "list",
        "model": "Embeddings",
        "data": [
            {
                "object": "embedding",
                "index": 1,
                "embedding": [0.0, 1.0],
                "usage": {"prompt_tokens": 7},
            },
            {
                "object": "embedding",
                "index": 0,
                "embedding": [1.0, 0.0],
                "usage": {"prompt_tokens": 9},
            },
        ],
    }
    result = wire.parse_embeddings(answer(200, payload))
    assert [item.index for item in result.items] == [0, 1]
    assert result.items[0].embedding == [1.0, 0.0]
    assert [item.prompt_tokens for item in result.items] == [9, 7]
    assert result.model == "Embeddings"


def test_parse_embeddings_item_without_index_is_malformed() -> None:
    with pytest.raises(ServerError):
        wire.parse_embeddings(answer(200, {"data": [{"embedding": [1.0]}]}))


def test_parse_tokens_count_reads_the_bare_array() -> None:
    payload = [{"object": "tokens", "tokens": 2, "characters": 10}, {"tokens": 5, "characters": 21}]
    assert wire.parse_tokens_count(answer(200, payload)) == [TokenCount(2, 10), TokenCount(5, 21)]


def test_parse_models() -> None:
    payload = {
        "object": "list",
        "data": [
            {"id": "GigaChat", "object": "model", "owned_by": "salutedevices", "type": "chat"},
            {
                "id": "Embeddings",
                "object": "model",
                "owned_by": "salutedevices",
                "type": "embedder",
            },
        ],
    }
    assert wire.parse_models(answer(200, payload)) == [
        ModelInfo("GigaChat", "chat", "salutedevices"),
        ModelInfo("Embeddings", "embedder", "salutedevices"),
    ]


def test_parse_balance() -> None:
    payload = {
        "balance": [{"usage": "GigaChat", "value": 900000}, {"usage": "embeddings", "value": 5}]
    }
    assert wire.parse_balance(answer(200, payload)) == [
        BalanceEntry("GigaChat", 900000.0),
        BalanceEntry("embeddings", 5.0),
    ]


def test_parse_oauth_token_reads_expires_at_in_milliseconds() -> None:
    token = wire.parse_token(answer(200, {"access_token": "t", "expires_at": 1_763_781_800_000}))
    assert token.value == "t"
    assert token.expires_at == 1_763_781_800.0


def test_parse_password_token_reads_tok_and_exp() -> None:
    token = wire.parse_token(answer(200, {"tok": "t2", "exp": 1_763_781_800_000}))
    assert (token.value, token.expires_at) == ("t2", 1_763_781_800.0)


def test_parse_token_takes_an_expiry_in_seconds_as_seconds() -> None:
    token = wire.parse_token(answer(200, {"access_token": "t", "expires_at": 1_763_781_800}))
    assert token.expires_at == 1_763_781_800.0


def test_parse_token_repr_hides_the_token() -> None:
    token = wire.parse_token(answer(200, {"access_token": "SECRET-T", "expires_at": 1}))
    assert "SECRET-T" not in repr(token)


@pytest.mark.parametrize("status", [400, 401, 403])
def test_rejected_credentials_are_authentication_failed(status: int) -> None:
    body = {"code": 6, "message": "credentials doesn't match db data"}
    with pytest.raises(AuthenticationFailed, match="credentials doesn't match db data"):
        wire.parse_token(answer(status, body))


@pytest.mark.parametrize("status", [429, 500, 503])
def test_token_endpoint_overload_stays_retryable(status: int) -> None:
    with pytest.raises((RateLimited, ServerError)):
        wire.parse_token(answer(status, {"code": status, "message": "busy"}))


@pytest.mark.parametrize(
    "usage",
    [None, "lots", {"prompt_tokens": "12", "completion_tokens": 3}, {"prompt_tokens": -1}],
)
def test_a_chat_answer_with_a_malformed_usage_says_its_usage_is_unknown(usage: Any) -> None:
    body: dict[str, Any] = {
        "choices": [{"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "model": "GigaChat:1",
    }
    if usage is not None:
        body["usage"] = usage
    answer = wire.chat_from_json(body)
    assert answer.content == "hi" and not answer.usage_known and answer.usage == Usage()


def test_an_embedding_item_without_usage_says_its_usage_is_unknown() -> None:
    body = {"data": [{"index": 0, "embedding": [0.5]}, {"index": 1, "embedding": [0.5],
                                                       "usage": {"prompt_tokens": 7}}]}
    first, second = wire.embeddings_from_json(body).items
    assert not first.usage_known and (second.usage_known, second.prompt_tokens) == (True, 7)
