"""A job's billed input as countable texts, and the overheads measured against the emulator."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import orjson
import pytest

from batch.client import GigaChatClient
from batch.emulator import RunningEmulator, profile, serve_emulator
from batch.errors import ConfigError
from batch.settings import ClientSettings
from jobs.base import BilledInput, Job, SourceLocation
from jobs.chat import MESSAGE_OVERHEAD, ChatKind
from jobs.embeddings import EMBEDDING_OVERHEAD, EmbeddingsKind
from jobs.registry import kind_for

HERE = SourceLocation("jobs.jsonl", 1)


def billed_input(kind: str, request: dict[str, Any]) -> BilledInput:
    return kind_for(kind).billed_input(Job("1", HERE, request))


def chat_input(request: dict[str, Any], *, message_overhead: int | None = None) -> BilledInput:
    return ChatKind().billed_input(Job("1", HERE, request), message_overhead=message_overhead)


def embedding_input(request: dict[str, Any]) -> BilledInput:
    return EmbeddingsKind().billed_input(Job("1", HERE, request))


WEATHER = {
    "name": "weather",
    "description": "Погода в городе",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
# Requests of the shapes gigabatch sends: one message, a system prompt, a dialogue,
# Cyrillic and punctuation, functions.
REQUESTS: list[dict[str, Any]] = [
    {"model": "GigaChat", "messages": [{"role": "user", "content": "Hello, world!"}]},
    {
        "model": "GigaChat",
        "messages": [
            {"role": "system", "content": "Ты — вежливый переводчик. Отвечай кратко."},
            {"role": "user", "content": "Переведи: «batch jobs run overnight»."},
        ],
    },
    {
        "model": "GigaChat-Pro",
        "messages": [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "And 3*3 = ? (explain, step by step)"},
        ],
    },
    {
        "model": "GigaChat",
        "messages": [{"role": "user", "content": "Какая погода в Москве?"}],
        "functions": [WEATHER],
        "function_call": "none",
    },
]
TEXTS = ["Hello, world!", "Векторы для поиска: 1024 числа.", "a b c d e f g", "x" * 300]


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    config = profile("fast", latency_base_ms=0, answer_tokens_min=1, answer_tokens_max=2)
    with serve_emulator(config) as emu:
        yield emu


async def counted(client: GigaChatClient, kind: str, request: dict[str, Any]) -> int:
    billed = billed_input(kind, request)
    counts = await client.tokens_count(list(billed.texts), billed.model)
    return sum(c.tokens for c in counts) + billed.overhead


def test_chat_input_counts_every_message_content_and_the_functions() -> None:
    billed = chat_input(REQUESTS[3])
    assert billed.texts == ("Какая погода в Москве?", orjson.dumps([WEATHER]).decode())
    assert billed.overhead == MESSAGE_OVERHEAD


def test_chat_input_charges_the_overhead_per_message() -> None:
    billed = chat_input(REQUESTS[2])
    assert len(billed.texts) == 3
    assert billed.overhead == 3 * MESSAGE_OVERHEAD
    assert billed.model == "GigaChat-Pro"


def test_chat_input_message_overhead_can_be_calibrated() -> None:
    assert chat_input(REQUESTS[2], message_overhead=10).overhead == 30


def test_chat_input_skips_empty_contents_but_still_bills_their_message() -> None:
    request = {
        "messages": [
            {"role": "user", "content": "call it"},
            {"role": "assistant", "content": "", "function_call": {"name": "f"}},
        ]
    }
    billed = chat_input(request)
    assert billed.texts == ("call it",)
    assert billed.overhead == 2 * MESSAGE_OVERHEAD
    assert billed.model == "GigaChat"


def test_embedding_input_is_the_text_plus_the_per_text_overhead() -> None:
    billed = embedding_input({"text": "Hello, world!", "model": "EmbeddingsGigaR"})
    assert (billed.model, billed.texts) == ("EmbeddingsGigaR", ("Hello, world!",))
    assert billed.overhead == EMBEDDING_OVERHEAD


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown job kind"):
        billed_input("image", {})


@pytest.mark.parametrize("request_body", REQUESTS, ids=["one", "system", "dialogue", "functions"])
def test_counted_chat_input_equals_the_prompt_tokens_the_emulator_bills(
    emulator: RunningEmulator, request_body: dict[str, Any]
) -> None:
    async def measure() -> tuple[int, int]:
        configured = ClientSettings.from_env(emulator.client_env(), verify_ssl_certs=False)
        async with GigaChatClient(configured) as client:
            answer = await client.chat(request_body)
            return await counted(client, "chat", request_body), answer.usage.prompt_tokens

    estimated, billed = anyio.run(measure)
    assert estimated == billed


def test_counted_embedding_input_equals_the_usage_the_emulator_bills(
    emulator: RunningEmulator,
) -> None:
    async def measure() -> tuple[int, int]:
        configured = ClientSettings.from_env(emulator.client_env(), verify_ssl_certs=False)
        async with GigaChatClient(configured) as client:
            answer = await client.embeddings(TEXTS, "Embeddings")
            estimated = 0
            for text in TEXTS:
                estimated += await counted(client, "embed", {"text": text, "model": "Embeddings"})
            return estimated, sum(item.prompt_tokens for item in answer.items)

    estimated, billed = anyio.run(measure)
    assert estimated == billed


def test_message_overhead_is_what_the_emulator_adds_per_message(emulator: RunningEmulator) -> None:
    # The measurement behind MESSAGE_OVERHEAD: one message vs the same text split in two.
    async def measure() -> tuple[int, int, int]:
        one = {"messages": [{"role": "user", "content": "alpha beta"}]}
        two = {
            "messages": [
                {"role": "user", "content": "alpha"},
                {"role": "user", "content": "beta"},
            ]
        }
        configured = ClientSettings.from_env(emulator.client_env(), verify_ssl_certs=False)
        async with GigaChatClient(configured) as client:
            billed_one = (await client.chat(one)).usage.prompt_tokens
            billed_two = (await client.chat(two)).usage.prompt_tokens
            (count,) = await client.tokens_count(["alpha beta"], "GigaChat")
            return billed_one, billed_two, count.tokens

    billed_one, billed_two, count = anyio.run(measure)
    assert billed_one - count == MESSAGE_OVERHEAD
    assert billed_two - billed_one == MESSAGE_OVERHEAD


def test_the_official_sdk_reports_the_same_overhead(emulator: RunningEmulator) -> None:
    # The same measurement through the official SDK's own chat and tokens_count.
    from gigachat import GigaChat

    with GigaChat(
        base_url=emulator.base_url,
        auth_url=emulator.auth_url,
        credentials=emulator.credentials,
        scope=emulator.scope,
        verify_ssl_certs=False,
    ) as sdk:
        for request in REQUESTS[:3]:
            answer = sdk.chat({"model": request["model"], "messages": request["messages"]})
            billed = chat_input(request)
            counts = sdk.tokens_count(list(billed.texts), model=billed.model)
            assert answer.usage.prompt_tokens == sum(c.tokens for c in counts) + billed.overhead
