"""The chat completion endpoints, `/api/v1/chat/completions` (legacy wire) and
`/api/v2/chat/completions` (primary wire): parse, charge the balance, then answer whole
or as a paced stream of frames. What the model says comes from `chat`."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING

from batch.emulator import chat
from batch.emulator.call import Call
from batch.emulator.pipeline import CHAT_POOL, charge, check_balance, latency, wait
from batch.emulator.replies import json_body, reject

if TYPE_CHECKING:
    from batch.emulator.app import EmulatorApp


async def serve_chat_legacy(app: EmulatorApp, call: Call, scope: str) -> None:
    await serve_chat(app, call, primary=False)


async def serve_chat_primary(app: EmulatorApp, call: Call, scope: str) -> None:
    await serve_chat(app, call, primary=True)


async def serve_chat(app: EmulatorApp, call: Call, *, primary: bool) -> None:
    now = time.time()
    try:
        body = json_body(call)
        request = chat.parse_primary(body) if primary else chat.parse_legacy(body)
        check_balance(app, CHAT_POOL)
        session = call.session.decode("latin-1") if call.session else None
        outcome = chat.complete(request, app.config, app.cache, session, now)
    except chat.RequestRejected as exc:
        await reject(call, exc)
        return
    tokens = app.stats.tokens
    tokens["prompt"] += outcome.prompt_tokens
    tokens["completion"] += outcome.completion_tokens
    tokens["precached"] += outcome.precached_tokens
    charge(app, CHAT_POOL, outcome.prompt_tokens + outcome.completion_tokens)
    if request.stream:
        message_id = str(uuid.uuid4())
        frames = (
            chat.primary_frames(outcome, message_id)
            if primary
            else chat.legacy_frames(outcome)
        )
        before, during = latency(app, outcome.prompt_tokens, outcome.completion_tokens)
        if before > 0:
            await asyncio.sleep(before)
        await call.stream(frames, during / len(frames))
        return
    answer = (
        chat.primary_body(outcome, str(uuid.uuid4()))
        if primary
        else chat.legacy_body(outcome, request.n)
    )
    await wait(app, call, outcome.prompt_tokens, outcome.completion_tokens)
    await call.reply(200, answer)
