"""The official `gigachat` SDK, unchanged, against the emulator over loopback."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Iterator

import pytest
from gigachat import GigaChat
from gigachat.exceptions import NotFoundError, RateLimitError

from batch.emulator import RunningEmulator, count_tokens, profile, serve_emulator
from batch.emulator.tokens import EMBEDDING_OVERHEAD, MESSAGE_OVERHEAD


@pytest.fixture(scope="module")
def emu() -> Iterator[RunningEmulator]:
    # Every test builds its own SDK client, so each fetches a token: lift the OAuth rate.
    with serve_emulator(profile("fast", seed=7, oauth_rate_per_s=1000)) as running:
        yield running


def sdk(emu: RunningEmulator, **overrides: object) -> GigaChat:
    options: dict[str, object] = {
        "base_url": emu.base_url,
        "auth_url": emu.auth_url,
        "credentials": emu.credentials,
        "scope": emu.scope,
        "model": "GigaChat",
        "verify_ssl_certs": False,
        "timeout": 10,
    }
    options.update(overrides)
    return GigaChat(**options)


def test_sdk_gets_a_token_with_the_authorization_key(emu: RunningEmulator) -> None:
    token = sdk(emu).get_token()
    assert token is not None and token.access_token
    lifetime_ms = token.expires_at - time.time() * 1000
    assert abs(lifetime_ms - 1800_000) < 10_000


def test_sdk_gets_a_token_with_user_and_password(emu: RunningEmulator) -> None:
    client = sdk(emu, credentials=None, user=emu.user, password=emu.password)
    answer = client.chat("Hello from a password user")
    assert answer.choices[0].finish_reason == "stop"


def test_sdk_chat_answer_is_deterministic_with_consistent_usage(emu: RunningEmulator) -> None:
    prompt = "Name three rivers of Siberia, please. [[answer_tokens=12]]"
    first = sdk(emu).chat(prompt)
    second = sdk(emu).chat(prompt)
    assert first.choices[0].message.content == second.choices[0].message.content
    usage = first.usage
    assert usage.prompt_tokens == count_tokens(prompt) + MESSAGE_OVERHEAD
    assert usage.completion_tokens == 12 == count_tokens(first.choices[0].message.content)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert first.model.startswith("GigaChat:")
    assert first.x_headers is not None and first.x_headers["x-request-id"]


def test_sdk_stream_yields_the_chat_answer_and_usage_last(emu: RunningEmulator) -> None:
    prompt = "Describe the Volga in a long paragraph [[answer_tokens=30]]"
    chunks = list(sdk(emu).stream(prompt))
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert text == sdk(emu).chat(prompt).choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 30
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_sdk_primary_chat_create_and_stream_use_the_v2_shape(emu: RunningEmulator) -> None:
    payload = {"messages": [{"role": "user", "content": "Hi there [[answer_tokens=9]]"}]}
    created = sdk(emu).chat.create(payload)
    assert created.finish_reason == "stop"
    assert created.usage is not None and created.usage.output_tokens == 9
    assert created.messages[0].content is not None
    text = created.messages[0].content[0].text
    events = list(sdk(emu).chat.stream(payload))
    streamed = "".join(
        part.text or ""
        for event in events
        for message in event.messages or []
        for part in message.content or []
    )
    assert streamed == text
    assert events[-1].finish_reason == "stop" and events[-1].usage is not None


def test_sdk_async_achat_and_astream_work(emu: RunningEmulator) -> None:
    async def scenario() -> tuple[str, str]:
        client = sdk(emu)
        answer = await client.achat("Async hello [[answer_tokens=5]]")
        pieces = [c.choices[0].delta.content or "" async for c in client.astream("Async hello")]
        await client.aclose()
        return answer.choices[0].message.content, "".join(pieces)

    answer, streamed = asyncio.run(scenario())
    assert count_tokens(answer) == 5
    assert streamed


def test_sdk_embeddings_are_unit_vectors_with_per_item_usage(emu: RunningEmulator) -> None:
    texts = ["first text", "second, longer text here", "first text"]
    result = sdk(emu).embeddings(texts)
    assert [item.index for item in result.data] == [0, 1, 2]
    for item, text in zip(result.data, texts, strict=True):
        assert len(item.embedding) == 1024
        assert math.isclose(math.hypot(*item.embedding), 1.0, rel_tol=1e-9)
        assert item.usage.prompt_tokens == count_tokens(text) + EMBEDDING_OVERHEAD
    assert result.data[0].embedding == result.data[2].embedding
    assert result.data[0].embedding != result.data[1].embedding


def test_sdk_embeddings_giga_r_has_2560_dimensions(emu: RunningEmulator) -> None:
    result = sdk(emu).embeddings(["text"], model="EmbeddingsGigaR")
    assert len(result.data[0].embedding) == 2560


def test_sdk_tokens_count_uses_the_shared_count(emu: RunningEmulator) -> None:
    counts = sdk(emu).tokens_count(["Hello, world!", "Привет, мир"])
    assert [(c.tokens, c.characters) for c in counts] == [(6, 13), (4, 11)]


def test_sdk_get_models_lists_chat_models_and_embedders(emu: RunningEmulator) -> None:
    models = sdk(emu).get_models()
    ids = {model.id_ for model in models.data}
    assert {"GigaChat", "GigaChat-2-Max", "Embeddings", "EmbeddingsGigaR"} <= ids
    assert sdk(emu).get_model("Embeddings-2").owned_by == "salutedevices"
    with pytest.raises(NotFoundError):
        sdk(emu).get_model("NoSuchModel")


def test_sdk_balance_decreases_with_use(emu: RunningEmulator) -> None:
    client = sdk(emu)
    before = {entry.usage: entry.value for entry in client.get_balance().balance}
    answer = client.chat("Spend some tokens [[answer_tokens=20]]")
    after = {entry.usage: entry.value for entry in client.get_balance().balance}
    assert before["GigaChat"] - after["GigaChat"] == answer.usage.total_tokens
    assert before["embeddings"] == after["embeddings"]


def test_sdk_rate_limit_error_carries_the_retry_after_the_emulator_sent() -> None:
    config = profile("b2b", stream_limit=1, latency_base_ms=400, retry_after_s=2.5, seed=1)
    with serve_emulator(config) as emu:
        holder = threading.Thread(target=sdk(emu).chat, args=("hold the only stream",))
        client = sdk(emu)
        client.get_token()
        holder.start()
        deadline = time.monotonic() + 5
        while emu.stats(arrivals=False)["peak_concurrency"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(RateLimitError) as caught:
            client.chat("over the limit")
        holder.join()
        assert caught.value.retry_after == 2.5
        assert caught.value.headers is not None
        assert caught.value.headers["retry-after"] == "2.5"
