"""The pipeline every `/api` request goes through: outage, 429 storm, bearer token, payment,
a stream slot of its scope, the fault dice and the seeded latency; plus the token balance
the chat and embedding endpoints draw on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from batch.emulator.call import JSON, Call
from batch.emulator.chat import RequestRejected
from batch.emulator.config import SCOPE_STREAM_LIMITS
from batch.emulator.faults import HTML_502
from batch.emulator.limits import retry_after
from batch.emulator.replies import (
    EXPIRED,
    GATEWAY_TIMEOUT,
    PAYMENT_REQUIRED,
    SERVER_ERROR,
    SERVICE_UNAVAILABLE,
    TOO_MANY,
    UNAUTHORIZED,
)

if TYPE_CHECKING:
    from batch.emulator.app import EmulatorApp

CHAT_POOL = "GigaChat"
EMBEDDING_POOL = "embeddings"
# A reset cuts the answer after this many bytes of a body announced as much longer.
RESET_AFTER = b'{"choices":[{"message":{"role":"assistant","content":"'
RESET_ANNOUNCED = b"4096"
# The random-401 fault spares tokens younger than this (a client's retry after a refresh).
FRESH_TOKEN_S = 1.0

# An endpoint: the app, the request, and the scope of its bearer token.
Handler = Callable[["EmulatorApp", Call, str], Awaitable[None]]


async def serve_api(app: EmulatorApp, call: Call, handler: Handler, limited: bool) -> None:
    now = time.time()
    if app.outage.active(now):
        app.stats.faults["outage"] += 1
        await unavailable(app, call)
        return
    storm = app.storm.remaining(now)
    if storm > 0:
        await too_many(app, call, storm, now)
        return
    scope = await authorize(app, call, now)
    if scope is None:
        return
    payment_after = app.config.payment_after
    if payment_after is not None and app.answered >= payment_after:
        await call.reply(402, PAYMENT_REQUIRED)
        return
    if not limited:
        await handler(app, call, scope)
        return
    await in_stream(app, call, handler, scope, now)


async def in_stream(
    app: EmulatorApp, call: Call, handler: Handler, scope: str, now: float
) -> None:
    """A request that holds one of its scope's streams while it is served."""
    config = app.config
    limit = config.stream_limit or SCOPE_STREAM_LIMITS[scope]
    if not app.streams.try_acquire(scope, limit):
        await too_many(app, call, config.retry_after_s, now)
        return
    app.stats.concurrency(app.streams.total())
    held = True
    try:
        fault = app.dice.roll(config)
        if fault == "401" and fresh_token(app, call, now):
            fault = None  # the server forgets old tokens: one just issued always works
        if fault == "drip":
            app.stats.faults[fault] += 1
            call.drip_s = config.drip_ms / 1000
            fault = None
        if fault is None:
            await handler(app, call, scope)
            if call.status == 200:
                app.answered += 1
                sent = time.time()
                app.stats.service(sent - call.arrived)
                if call.due is not None:
                    app.pacer.observe(sent - call.due)
        else:
            app.stats.faults[fault] += 1
            if fault == "hang":
                # The answer is lost upstream: the stream is free, the client waits.
                app.streams.release(scope)
                held = False
            await inject_fault(app, call, fault, now)
    finally:
        if held:
            app.streams.release(scope)


def fresh_token(app: EmulatorApp, call: Call, now: float) -> bool:
    token = call.headers.get(b"authorization", b"")[7:].decode("latin-1")
    return app.tokens.age(token, now) < FRESH_TOKEN_S


async def authorize(app: EmulatorApp, call: Call, now: float) -> str | None:
    header = call.headers.get(b"authorization", b"")
    if not header.startswith(b"Bearer "):
        await call.reply(401, UNAUTHORIZED)
        return None
    scope, expired = app.tokens.check(header[7:].decode("latin-1"), now)
    if scope is None or expired:
        await call.reply(401, EXPIRED if expired else UNAUTHORIZED)
        return None
    return scope


async def too_many(app: EmulatorApp, call: Call, seconds: float, now: float) -> None:
    header, until = retry_after(app.config.retry_after, seconds, now)
    if header is None:
        await call.reply(429, TOO_MANY)
        return
    app.stats.window(now, until)
    await call.reply(429, TOO_MANY, extra=((b"retry-after", header),))


async def inject_fault(app: EmulatorApp, call: Call, fault: str, now: float) -> None:
    if fault == "5xx":
        await call.reply(500, SERVER_ERROR)
    elif fault == "html_502":
        await call.reply(502, HTML_502, content_type=b"text/html")
    elif fault == "reset":
        await cut(call)
    elif fault == "hang":
        if not await call.gone_within(app.config.hang_s):
            await call.reply(504, GATEWAY_TIMEOUT)
    elif fault == "error_body":
        await call.reply(200, TOO_MANY)
    elif fault == "429":
        await call.reply(429, TOO_MANY)
    elif fault == "401":
        await call.reply(401, EXPIRED)
    else:  # storm: this request opens it
        app.storm.start(now, app.config.storm_s)
        await too_many(app, call, app.storm.remaining(now), now)


async def cut(call: Call) -> None:
    """Announce a long body, send its first bytes, return: uvicorn then closes the
    connection, which the client sees as a reset mid-response."""
    await call.send({
        "type": "http.response.start",
        "status": 200,
        "headers": [
            (b"content-type", JSON),
            (b"content-length", RESET_ANNOUNCED),
            (b"x-request-id", call.request_id),
            (b"x-session-id", call.session_id),
        ],
    })
    await call.send({"type": "http.response.body", "body": RESET_AFTER, "more_body": True})


async def unavailable(app: EmulatorApp, call: Call) -> None:
    """An API request during an outage: no answer (the connection is cut), or a 503."""
    if app.config.outage_mode == "503":
        await call.reply(503, SERVICE_UNAVAILABLE)
    else:
        await cut(call)


def latency(app: EmulatorApp, prompt: int, completion: int) -> tuple[float, float]:
    """Seeded latency split into (before the answer starts, while it streams)."""
    config = app.config
    before = (config.latency_base_ms + config.latency_per_prompt_token_ms * prompt) / 1000
    during = config.latency_per_completion_token_ms * completion / 1000
    if config.latency_jitter and before + during > 0:
        factor = 1 + config.latency_jitter * (2 * app.jitter.random() - 1)
        before, during = before * factor, during * factor
    app.stats.latency(before + during)
    return before, during


async def wait(app: EmulatorApp, call: Call, prompt: int, completion: int) -> None:
    """Hold the request until its latency has passed since it arrived: parsing and
    building the answer happen inside that time, as on a real server, and the pacer
    ends the wait early by the timer's mean lateness, so a stream is held for the
    configured latency on average and the capacity is limit / mean latency."""
    before, during = latency(app, prompt, completion)
    due = call.arrived + before + during
    remaining = app.pacer.remaining(due, time.time())
    if remaining > 0:
        call.due = due
        await asyncio.sleep(remaining)


def check_balance(app: EmulatorApp, pool: str) -> None:
    if app.config.balance_tokens is not None and app.balance[pool] <= 0:
        raise RequestRejected(402, "Payment required: token balance exhausted")


def charge(app: EmulatorApp, pool: str, tokens: int) -> None:
    if app.config.balance_tokens is not None:
        app.balance[pool] = max(0, app.balance[pool] - tokens)
