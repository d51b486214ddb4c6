"""One request as the emulator serves it: what the handlers read, and the ways it answers
(a JSON reply, a slow-drip reply, an SSE stream)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON = b"application/json"
EVENT_STREAM = b"text/event-stream"


class Call:
    """One request in flight: what the handlers need and the status it got."""

    __slots__ = (
        "arrived", "body", "drip_s", "due", "headers", "method", "path", "query", "receive",
        "request_id", "send", "session", "status",
    )

    def __init__(
        self, scope: Scope, body: bytes, send: Send, receive: Receive, arrived: float
    ) -> None:
        self.arrived = arrived
        self.drip_s = 0.0  # > 0: the answer trickles out one byte per drip_s (a fault)
        self.receive = receive
        self.due: float | None = None  # when a paced answer is due (`EmulatorApp._wait`)
        self.path: str = scope["path"]
        self.method: str = scope["method"]
        self.query: bytes = scope.get("query_string", b"")
        self.headers: dict[bytes, bytes] = dict(scope["headers"])
        self.body = body
        self.send = send
        self.request_id = self.headers.get(b"x-request-id") or str(uuid.uuid4()).encode()
        self.session = self.headers.get(b"x-session-id")
        self.status = 0

    @property
    def session_id(self) -> bytes:
        if self.session is None:
            self.session = str(uuid.uuid4()).encode()
        return self.session

    async def reply(
        self,
        status: int,
        body: bytes,
        *,
        content_type: bytes = JSON,
        extra: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        self.status = status
        await self.send({
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", self.request_id),
                (b"x-session-id", self.session_id),
                *extra,
            ],
        })
        if self.drip_s > 0:
            await self._drip(body)
            return
        await self.send({"type": "http.response.body", "body": body})

    async def _drip(self, body: bytes) -> None:
        """Send `body` one byte per `drip_s`, until done or the client gives up."""
        for i in range(len(body)):
            more = i + 1 < len(body)
            chunk = body[i : i + 1]
            await self.send({"type": "http.response.body", "body": chunk, "more_body": more})
            if more and await self.gone_within(self.drip_s):
                self.status = 0
                return

    async def gone_within(self, seconds: float) -> bool:
        """Wait up to `seconds`; True as soon as the client disconnects."""
        try:
            message = await asyncio.wait_for(self.receive(), seconds)
        except TimeoutError:
            return False
        return bool(message.get("type") == "http.disconnect")

    async def stream(self, frames: list[bytes], gap_s: float) -> None:
        self.status = 200
        await self.send({
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", EVENT_STREAM),
                (b"cache-control", b"no-store"),
                (b"x-request-id", self.request_id),
                (b"x-session-id", self.session_id),
            ],
        })
        for frame in frames:
            if gap_s > 0:
                await asyncio.sleep(gap_s)
            await self.send({"type": "http.response.body", "body": frame, "more_body": True})
        await self.send({"type": "http.response.body", "body": b""})
