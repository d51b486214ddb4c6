"""Each HTTP request leaves in one socket write (batch.coalescing)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import anyio
import httpcore
import pytest

from batch.client import GigaChatClient
from batch.coalescing import FLUSH_AT, CoalescingBackend, CoalescingStream
from batch.emulator import RunningEmulator, profile, serve_emulator


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
        async with GigaChatClient(emulator.client_settings(), max_connections=4) as client:
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
