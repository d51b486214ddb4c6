"""The token endpoints: `/api/v2/oauth` (authorization key + scope, the GigaChat way) and
`/api/v1/token` (user and password), both issuing bearer tokens from the app's store."""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

import orjson

from batch.emulator.call import Call
from batch.emulator.config import SCOPES, EmulatorConfig
from batch.emulator.limits import retry_after
from batch.emulator.replies import METHOD_NOT_ALLOWED, UNAUTHORIZED

if TYPE_CHECKING:
    from batch.emulator.app import EmulatorApp


def credentials_for(config: EmulatorConfig) -> str:
    """The base64 authorization key the emulator accepts."""
    return base64.b64encode(f"{config.client_id}:{config.client_secret}".encode()).decode()


def oauth_error(code: int, message: str) -> bytes:
    return orjson.dumps({"code": code, "message": message})


async def serve_oauth(app: EmulatorApp, call: Call) -> None:
    app.stats.oauth_calls += 1
    now = time.time()
    config = app.config
    if call.method != "POST":
        await call.reply(405, METHOD_NOT_ALLOWED)
        return
    if not app.oauth_rate.allow(now, config.oauth_rate_per_s) or app.dice.oauth_refused(
        config
    ):
        header, _ = retry_after(config.retry_after, 1.0, now)
        extra = ((b"retry-after", header),) if header else ()
        await call.reply(429, oauth_error(10, "Too many requests"), extra=extra)
        return
    try:
        rquid = uuid.UUID(call.headers.get(b"rquid", b"").decode("latin-1"))
    except ValueError:
        rquid = None
    if rquid is None or rquid.version != 4:
        await call.reply(400, oauth_error(5, "RqUID header must be a uuid4"))
        return
    header = call.headers.get(b"authorization", b"")
    if not header.startswith(b"Basic "):
        await call.reply(401, oauth_error(4, "Can't decode 'Authorization' header"))
        return
    if header[6:].strip() != app.credentials:
        await call.reply(401, oauth_error(6, "credentials doesn't match db data"))
        return
    scope = parse_qs(call.body.decode("utf-8", "replace")).get("scope", [""])[0]
    if scope not in SCOPES:
        await call.reply(400, oauth_error(7, "scope is invalid"))
        return
    if scope != config.scope:
        await call.reply(
            400, oauth_error(7, "scope from db not fully includes consumed scope")
        )
        return
    token, expires = app.tokens.issue(scope, now, config.token_ttl_s)
    await call.reply(
        200, orjson.dumps({"access_token": token, "expires_at": int(expires * 1000)})
    )


async def serve_password_token(app: EmulatorApp, call: Call) -> None:
    app.stats.oauth_calls += 1
    now = time.time()
    header = call.headers.get(b"authorization", b"")
    expected = f"{app.config.user}:{app.config.password}".encode()
    try:
        given = base64.b64decode(header[6:], validate=True)
    except (binascii.Error, ValueError):
        given = b""
    if call.method != "POST" or not header.startswith(b"Basic ") or given != expected:
        await call.reply(401, UNAUTHORIZED)
        return
    token, expires = app.tokens.issue(app.config.scope, now, app.config.token_ttl_s)
    await call.reply(200, orjson.dumps({"tok": token, "exp": int(expires * 1000)}))
