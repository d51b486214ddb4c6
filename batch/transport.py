"""The one seam below httpx: the sharded keep-alive pool and one-write requests.

Everything tuned under httpx lives here, and only here are httpx or httpcore private
attributes touched (the network backend of the pool an httpx transport builds, and the
locks of its connections).

- `ShardedPool` splits `max_connections` over small httpx pools (httpcore scans every
  connection of a pool per request).
- `CoalescingBackend` / `CoalescingStream` send each request in one write. httpcore writes a
  request as one socket write per h11 event (the head, each body chunk, the end), and every
  write yields to the event loop. A request's writes are held until the connection reads
  (which it does as soon as the request is out), so a small request leaves in one send; a
  large body still goes out in slices of at most `FLUSH_AT` bytes.
- `quicken_locks` gives each connection's locks anyio's fast acquire. httpcore takes three
  locks per request (the connection's, then its HTTP/1.1 state twice), and anyio's default
  Lock yields to the event loop on every uncontended acquire: three extra loop turns, each
  with a shielded cancel scope, per request.
- `send_check` is called at the last moment before a request's bytes leave (each flush):
  it raises (`batch.errors.SendHeld`) when a run-wide pause began after the request passed
  the limiter, so nothing leaves inside a window the server announced.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import httpcore
import httpx

from batch.fast_lock import FastLock

FLUSH_AT = 64 * 1024

SendCheck = Callable[[], None]


class CoalescingStream(httpcore.AsyncNetworkStream):
    """Writes are buffered until the next read (or until `FLUSH_AT` bytes are waiting)."""

    def __init__(
        self, stream: httpcore.AsyncNetworkStream, send_check: SendCheck | None = None
    ) -> None:
        self._stream = stream
        self._send_check = send_check
        self._pending: list[bytes] = []
        self._size = 0
        self._timeout: float | None = None

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        self._pending.append(buffer)
        self._size += len(buffer)
        self._timeout = timeout
        if self._size >= FLUSH_AT:
            await self._flush()

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self._pending:
            await self._flush()
        return await self._stream.read(max_bytes, timeout)

    async def _flush(self) -> None:
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        self._size = 0
        if self._send_check is not None:
            self._send_check()  # raising here drops the request unsent (and the connection)
        await self._stream.write(data, self._timeout)

    async def aclose(self) -> None:
        self._pending.clear()
        self._size = 0
        await self._stream.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        if self._pending:  # a proxy's CONNECT must be out before the handshake
            await self._flush()
        tls = await self._stream.start_tls(ssl_context, server_hostname, timeout)
        return CoalescingStream(tls, self._send_check)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class CoalescingBackend(httpcore.AsyncNetworkBackend):
    """httpcore's own backend, with every stream it opens wrapped in `CoalescingStream`."""

    def __init__(
        self,
        backend: httpcore.AsyncNetworkBackend | None = None,
        send_check: SendCheck | None = None,
    ) -> None:
        self._backend = backend if backend is not None else httpcore.AnyIOBackend()
        self._send_check = send_check

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._backend.connect_tcp(
            host, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )
        return CoalescingStream(stream, self._send_check)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._backend.connect_unix_socket(
            path, timeout=timeout, socket_options=socket_options
        )
        return CoalescingStream(stream, self._send_check)

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


def _install(transport: httpx.AsyncHTTPTransport, backend: CoalescingBackend) -> bool:
    """Give the pool `transport` built our network backend. httpx offers no public way to
    pass httpcore one, so it is set on that pool; False when the attribute is gone (the
    transport then works as it is, one write per h11 event, which tests catch)."""
    pool = getattr(transport, "_pool", None)
    if pool is None or not hasattr(pool, "_network_backend"):
        return False
    pool._network_backend = backend
    return True


def _quicken(owner: object, name: str) -> None:
    """Replace `owner.<name>`, an httpcore AsyncLock, by a FastLock while nobody holds it."""
    lock = getattr(owner, name, None)
    if lock is None or isinstance(lock, FastLock):
        return
    held = getattr(lock, "_anyio_lock", None)  # set on the lock's first use under asyncio
    if getattr(lock, "_backend", "") not in ("", "asyncio") or (held and held.locked()):
        return
    setattr(owner, name, FastLock())


def quicken_locks(pool: object) -> None:
    """Give the connections of an httpcore pool fast locks: each connection's own (taken per
    request) and, once it is connected, its HTTP/1.1 state lock. Only attributes of this
    httpcore version are touched; under another one nothing changes (requests still work,
    one loop turn slower, and tests catch it)."""
    for connection in getattr(pool, "connections", ()):
        _quicken(connection, "_request_lock")
        _quicken(getattr(connection, "_connection", None), "_state_lock")


class _ReleasingStream(httpx.AsyncByteStream):
    """A response body that tells its shard when the connection is given back."""

    def __init__(self, stream: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._stream = stream
        self._release: Callable[[], None] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        if self._release is not None:
            self._release()
            self._release = None
        await self._stream.aclose()


class ShardedPool(httpx.AsyncBaseTransport):
    """`max_connections` keep-alive connections split over small httpx pools, each sending
    every request in one write.

    httpcore scans every connection of its pool (a readability syscall on each idle one) for
    every request, so one pool of 32 spends most of the client's CPU there; pools of at most
    SHARD_SIZE, each request sent through the one with the most free connections, give the
    same total limit with 2-3x the requests per second. A request waits for a connection only
    when all `max_connections` are busy, and then for as long as it takes (no pool timeout).
    `network_backend` replaces httpcore's sockets (tests pass a scripted one); `send_check`
    is called right before each request's bytes leave (see the module's docstring).
    """

    SHARD_SIZE = 4

    def __init__(
        self,
        max_connections: int,
        *,
        verify: ssl.SSLContext | bool = True,
        proxy: str | None = None,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
        send_check: SendCheck | None = None,
    ) -> None:
        count = -(-max(1, max_connections) // self.SHARD_SIZE)
        sizes = [max_connections // count + (i < max_connections % count) for i in range(count)]
        self.sizes = [max(1, size) for size in sizes]
        self._busy = [0] * count
        self._shards = [
            httpx.AsyncHTTPTransport(
                verify=verify,
                proxy=proxy,
                limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
            )
            for size in self.sizes
        ]
        backend = CoalescingBackend(network_backend, send_check)
        installed = [_install(shard, backend) for shard in self._shards]
        if network_backend is not None and not all(installed):
            raise TypeError("this httpx version does not let ShardedPool set a network backend")

    @property
    def in_flight(self) -> int:
        """Requests holding (or waiting for) a connection right now."""
        return sum(self._busy)

    def open_connections(self) -> list[int]:
        """Connections each shard holds now (open or being opened), shard by shard."""
        return [len(shard._pool.connections) for shard in self._shards]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = max(range(len(self._shards)), key=lambda i: self.sizes[i] - self._busy[i])
        self._busy[index] += 1

        def release() -> None:
            self._busy[index] -= 1

        shard = self._shards[index]
        try:
            response = await shard.handle_async_request(request)
        except BaseException:
            release()
            raise
        quicken_locks(shard._pool)  # the connection this request opened, if it did
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_ReleasingStream(response.stream, release),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.aclose()
