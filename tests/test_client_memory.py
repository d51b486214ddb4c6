"""The client frees each response (and its body) as soon as it is parsed, by reference
counting: bodies never pile up waiting for the cyclic garbage collector."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import anyio
import httpx
import pytest

from batch.client import GigaChatClient
from batch.emulator import profile, serve_emulator
from batch.settings import ClientSettings, Secret

VECTOR = [0.25] * 1024


def _mock_api(request: httpx.Request) -> httpx.Response:
    if request.url.path.endswith("/oauth"):
        return httpx.Response(200, json={"access_token": "t", "expires_at": 4102444800000})
    data = [
        {"object": "embedding", "embedding": VECTOR, "index": i, "usage": {"prompt_tokens": 3}}
        for i in range(16)
    ]
    return httpx.Response(200, json={"object": "list", "data": data, "model": "Embeddings"})


@pytest.fixture()
def no_cyclic_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _live_responses() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, httpx.Response))


async def _embed_many(client: GigaChatClient, calls: int) -> None:
    async with anyio.create_task_group() as tg:
        for _ in range(calls):
            tg.start_soon(client.embeddings, ["один текст"] * 16, "Embeddings")


def test_parsed_responses_are_freed_without_the_cyclic_gc_over_a_mock_transport(
    no_cyclic_gc: None,
) -> None:
    settings = ClientSettings(
        base_url="http://api.test/api/v1",
        auth_url="http://auth.test/api/v2/oauth",
        credentials=Secret("Y2xpZW50OnNlY3JldA=="),
    )

    async def main() -> int:
        async with GigaChatClient(settings, transport=httpx.MockTransport(_mock_api)) as client:
            await _embed_many(client, 20)
            return _live_responses()

    assert anyio.run(main) == 0


def test_parsed_responses_are_freed_without_the_cyclic_gc_over_the_network(
    no_cyclic_gc: None,
) -> None:
    with serve_emulator(profile("fast")) as emu:
        settings = ClientSettings.from_env(emu.client_env())

        async def main() -> int:
            async with GigaChatClient(settings, max_connections=8) as client:
                await _embed_many(client, 20)
                return _live_responses()

        assert anyio.run(main) == 0
