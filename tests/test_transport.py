"""The transport seam (batch.transport): each HTTP request leaves in one socket write, and
the connections are split over small pools. The pool tests go through httpx and httpcore
for real, over a scripted network backend or the emulator on loopback."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import httpcore
import orjson
import pytest

from batch.client import GigaChatClient
from batch.emulator import RunningEmulator, profile, serve_emulator
from batch.errors import SendHeld
from batch.fast_lock import FastLock
from batch.settings import ClientSettings
from batch.transport import FLUSH_AT, CoalescingBackend, CoalescingStream, ShardedPool


class RecordingStream(httpcore.AsyncNetworkStream):
    """A network stream that records what is written and answers reads from a script.
    (Its `timeout` parameters are httpcore's interface, hence the ASYNC109 exemptions.)"""

    def __init__(self, replies: list[bytes] | None = None) -> None:
        self.writes: list[bytes] = []
        self.timeouts: list[float | None] = []
        self.events: list[str] = []
        self.replies = replies or []
        self.closed = False

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        self.writes.append(buffer)
        self.timeouts.append(timeout)
        self.events.append("write")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        self.events.append("read")
        return self.replies.pop(0) if self.replies else b""

    async def aclose(self) -> None:
        self.closed = True

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore.AsyncNetworkStream:
        self.events.append("start_tls")
        return RecordingStream()

    def get_extra_info(self, info: str) -> object:
        return f"info:{info}"


def test_writes_before_a_read_go_out_as_one_write_in_order() -> None:
    inner = RecordingStream([b"HTTP/1.1 200 OK\r\n"])
    stream = CoalescingStream(inner)

    async def scenario() -> bytes:
        await stream.write(b"POST / HTTP/1.1\r\n\r\n", timeout=3.0)
        await stream.write(b'{"a": 1}', timeout=3.0)
        await stream.write(b"", timeout=3.0)
        assert inner.writes == []  # nothing sent until the connection reads
        return await stream.read(1024, timeout=5.0)

    assert anyio.run(scenario) == b"HTTP/1.1 200 OK\r\n"
    assert inner.writes == [b'POST / HTTP/1.1\r\n\r\n{"a": 1}']
    assert inner.events == ["write", "read"]
    assert inner.timeouts == [3.0]


def test_a_read_with_nothing_pending_writes_nothing() -> None:
    inner = RecordingStream([b"x"])
    anyio.run(CoalescingStream(inner).read, 10)
    assert inner.writes == []


def test_a_large_body_is_sent_in_slices_before_the_read() -> None:
    inner = RecordingStream()
    stream = CoalescingStream(inner)
    head, chunk = b"H" * 100, b"b" * (FLUSH_AT // 2)

    async def scenario() -> None:
        await stream.write(head)
        for _ in range(4):
            await stream.write(chunk)
        await stream.read(10)

    anyio.run(scenario)
    # Flushed as soon as FLUSH_AT bytes wait: after the 2nd chunk and after the 4th.
    assert b"".join(inner.writes) == head + chunk * 4
    assert [len(w) for w in inner.writes] == [len(head) + 2 * len(chunk), 2 * len(chunk)]


def test_close_drops_unsent_bytes_and_closes_the_socket() -> None:
    inner = RecordingStream()
    stream = CoalescingStream(inner)

    async def scenario() -> None:
        await stream.write(b"never sent")
        await stream.aclose()

    anyio.run(scenario)
    assert inner.writes == [] and inner.closed


def test_start_tls_flushes_first_and_keeps_coalescing() -> None:
    inner = RecordingStream()
    stream = CoalescingStream(inner)

    async def scenario() -> httpcore.AsyncNetworkStream:
        await stream.write(b"CONNECT host:443 HTTP/1.1\r\n\r\n")
        return await stream.start_tls(ssl.create_default_context(), "host")

    tls = anyio.run(scenario)
    assert inner.events == ["write", "start_tls"]
    assert isinstance(tls, CoalescingStream)
    assert stream.get_extra_info("server_addr") == "info:server_addr"


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    with serve_emulator(profile("fast", seed=1)) as emu:
        yield emu


def test_client_requests_leave_in_one_write_each(
    emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the real client and pool: one socket write per API request (a failure here
    means httpx stopped letting the pool take our network backend)."""
    flushes: list[int] = []
    original = CoalescingStream._flush

    async def counting_flush(self: CoalescingStream) -> None:
        flushes.append(self._size)
        await original(self)

    monkeypatch.setattr(CoalescingStream, "_flush", counting_flush)
    body = {"model": "GigaChat", "messages": [{"role": "user", "content": "hello"}]}

    async def scenario() -> list[str]:
        configured = ClientSettings.from_env(emulator.client_env())
        async with GigaChatClient(configured, max_connections=4) as client:
            answers = [await client.chat(body) for _ in range(5)]
            await client.models()
        return [a.content for a in answers]

    assert all(anyio.run(scenario))
    assert len(flushes) == 6  # 5 chats with a body, 1 GET without one
    assert all(size > 0 for size in flushes)


def test_backend_wraps_every_stream_it_opens() -> None:
    class Opening(httpcore.AsyncNetworkBackend):
        async def connect_tcp(self, *args: object, **kwargs: object) -> RecordingStream:
            return RecordingStream()

        async def connect_unix_socket(self, *args: object, **kwargs: object) -> RecordingStream:
            return RecordingStream()

    backend = CoalescingBackend(Opening())

    async def scenario() -> list[httpcore.AsyncNetworkStream]:
        return [
            await backend.connect_tcp("127.0.0.1", 1),
            await backend.connect_unix_socket("/tmp/socket"),
        ]

    assert all(isinstance(s, CoalescingStream) for s in anyio.run(scenario))


# --- through the real pool, over a scripted network ---------------------------------------

CHAT_ANSWER = orjson.dumps(
    {
        "choices": [{"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "model": "GigaChat:1",
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
)
MODELS_ANSWER = orjson.dumps({"data": [{"id": "GigaChat", "owned_by": "x", "type": "chat"}]})


def http_response(body: bytes) -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
    return head.encode() + b"\r\n\r\n" + body


class ServerStream(httpcore.AsyncNetworkStream):
    """One scripted keep-alive connection: it records every write and answers each request
    (a write that starts a request line) with `answer`, after `gate` opens."""

    def __init__(self, answer: bytes, gate: anyio.Event) -> None:
        self.writes: list[bytes] = []
        self._answer = answer
        self._gate = gate
        self._owed = 0

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        self.writes.append(buffer)
        if buffer.startswith((b"GET ", b"POST ")):
            self._owed += 1

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        if self._owed == 0:
            return b""
        await self._gate.wait()
        self._owed -= 1
        return http_response(self._answer)

    async def aclose(self) -> None:
        pass

    def get_extra_info(self, info: str) -> Any:
        return False if info == "is_readable" else None


class ScriptedNetwork(httpcore.AsyncNetworkBackend):
    """A network where every connection is a `ServerStream`; `gate` holds the answers."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.gate = anyio.Event()
        self.gate.set()
        self.connections: list[ServerStream] = []

    def hold_answers(self) -> None:
        self.gate = anyio.Event()

    async def connect_tcp(self, *args: object, **kwargs: object) -> ServerStream:
        self.connections.append(ServerStream(self.answer, self.gate))
        return self.connections[-1]

    async def connect_unix_socket(self, *args: object, **kwargs: object) -> ServerStream:
        raise NotImplementedError

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


def scripted_client(pool: ShardedPool) -> GigaChatClient:
    settings = ClientSettings.from_env(
        {"GIGACHAT_BASE_URL": "http://api.test/api/v1", "GIGACHAT_ACCESS_TOKEN": "t"}
    )
    return GigaChatClient(settings, transport=pool)


def test_each_request_through_the_pool_is_one_write_of_head_and_body() -> None:
    """Fails if the pool stops taking our backend: httpcore alone writes head and body apart."""
    network = ScriptedNetwork(CHAT_ANSWER)
    body = {"model": "GigaChat", "messages": [{"role": "user", "content": "hello"}]}

    async def scenario() -> None:
        async with scripted_client(ShardedPool(4, network_backend=network)) as client:
            for _ in range(3):
                assert (await client.chat(body)).content == "hi"

    anyio.run(scenario)
    [connection] = network.connections  # kept alive between the three
    assert len(connection.writes) == 3
    for write in connection.writes:
        head, _, sent = write.partition(b"\r\n\r\n")
        assert head.startswith(b"POST /api/v1/chat/completions HTTP/1.1\r\n")
        assert f"Content-Length: {len(sent)}".encode() in head
        assert orjson.loads(sent)["messages"] == body["messages"]


def test_a_request_held_by_the_send_check_never_leaves_and_the_next_one_does() -> None:
    """The run-wide pause is checked once more as the bytes would leave: a held request
    writes nothing, raises SendHeld (not sent, so not a connection failure), and the
    pool carries on."""
    network = ScriptedNetwork(MODELS_ANSWER)
    paused = False

    def check() -> None:
        if paused:
            raise SendHeld("a run-wide pause began")

    async def scenario() -> None:
        nonlocal paused
        pool = ShardedPool(4, network_backend=network, send_check=check)
        async with scripted_client(pool) as client:
            await client.models()
            paused = True
            with pytest.raises(SendHeld):
                await client.models()
            paused = False
            await client.models()

    anyio.run(scenario)
    writes = [write for connection in network.connections for write in connection.writes]
    assert len(writes) == 2
    assert all(write.startswith(b"GET /api/v1/models HTTP/1.1") for write in writes)


POOL_SIZE = 8


async def hold(
    client: GigaChatClient, network: ScriptedNetwork, requests: int, check: Callable[[], None]
) -> None:
    """Send `requests` at once with the answers held, run `check`, then let them finish."""
    network.hold_answers()
    async with anyio.create_task_group() as tg:
        for _ in range(requests):
            tg.start_soon(client.models)
        await wait_until(lambda: len(network.connections) >= min(requests, POOL_SIZE))
        await anyio.sleep(0.05)  # any request over the limit would have connected by now
        check()
        network.gate.set()


async def wait_until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(5):
        while not condition():  # noqa: ASYNC110 (the pool offers no event to wait on)
            await anyio.sleep(0.001)


def run_held(requests: int, check: Callable[[ShardedPool], None]) -> ShardedPool:
    network = ScriptedNetwork(MODELS_ANSWER)
    pool = ShardedPool(POOL_SIZE, network_backend=network)

    async def scenario() -> None:
        async with scripted_client(pool) as client:
            await hold(client, network, requests, lambda: check(pool))

    anyio.run(scenario)
    return pool


def test_busy_connections_are_spread_over_shards_of_at_most_four() -> None:
    def check(pool: ShardedPool) -> None:
        assert pool.open_connections() == [4, 4]

    run_held(8, check)


def test_a_request_goes_to_the_shard_with_the_most_free_connections() -> None:
    def check(pool: ShardedPool) -> None:
        assert pool.open_connections() == [1, 1]

    run_held(2, check)


def test_a_request_over_the_limit_waits_for_a_connection_without_a_pool_timeout() -> None:
    def check(pool: ShardedPool) -> None:
        assert pool.open_connections() == [4, 4]
        assert pool.in_flight == 10

    pool = run_held(10, check)
    assert pool.in_flight == 0  # every connection was given back


@pytest.mark.parametrize("total", [1, 3, 4, 5, 16, 37, 256])
def test_pool_shards_add_up_to_max_connections(total: int) -> None:
    pool = ShardedPool(total, verify=ssl.create_default_context(), proxy=None)
    assert sum(pool.sizes) == total
    assert max(pool.sizes) <= ShardedPool.SHARD_SIZE
    anyio.run(pool.aclose)


def test_connections_get_fast_locks_after_their_first_request() -> None:
    """httpcore's locks are anyio Locks that yield to the event loop on every free acquire
    (three per request); the pool swaps in FastLocks, which do not. Fails if the swap stops
    reaching the connection's lock or its HTTP/1.1 state lock."""
    network = ScriptedNetwork(CHAT_ANSWER)
    body = {"model": "GigaChat", "messages": [{"role": "user", "content": "hello"}]}
    pool = ShardedPool(4, network_backend=network)
    connections: list[Any] = []

    async def scenario() -> None:
        async with scripted_client(pool) as client:
            for _ in range(3):
                assert (await client.chat(body)).content == "hi"
            connections.extend(c for shard in pool._shards for c in shard._pool.connections)

    anyio.run(scenario)
    [connection] = connections
    assert isinstance(connection._request_lock, FastLock)
    assert isinstance(connection._connection._state_lock, FastLock)


def test_a_fast_lock_taken_free_does_not_yield_and_waiters_go_in_order() -> None:
    lock = FastLock()
    order: list[str] = []

    async def hold(name: str) -> None:
        async with lock:
            order.append(name)
            await anyio.sleep(0.01)

    async def scenario() -> None:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(ticker)
            await anyio.lowlevel.checkpoint()
            before = ticks
            async with lock:
                pass
            assert ticks == before  # no loop turn was taken
            tasks.start_soon(hold, "first")
            tasks.start_soon(hold, "second")
            await anyio.sleep(0.05)
            tasks.cancel_scope.cancel()

    anyio.run(scenario)
    assert order == ["first", "second"]
