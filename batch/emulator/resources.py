"""The other `/api/v1` endpoints: embeddings, token counts, the model list, the token
balance, and the batch API with its result files."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import orjson

from batch.emulator import batches, embeddings
from batch.emulator.call import Call
from batch.emulator.chat import RequestRejected
from batch.emulator.models import MODELS, model_entry
from batch.emulator.pipeline import EMBEDDING_POOL, charge, check_balance, too_many, wait
from batch.emulator.replies import (
    FORBIDDEN,
    METHOD_NOT_ALLOWED,
    NO_SUCH_MODEL,
    json_body,
    reject,
)
from batch.emulator.tokens import count_tokens

if TYPE_CHECKING:
    from batch.emulator.app import EmulatorApp


async def serve_embeddings(app: EmulatorApp, call: Call, scope: str) -> None:
    try:
        result = embeddings.answer(json_body(call), app.config)
        check_balance(app, EMBEDDING_POOL)
    except RequestRejected as exc:
        await reject(call, exc)
        return
    app.stats.tokens["embedding"] += result.usage
    charge(app, EMBEDDING_POOL, result.usage)
    await wait(app, call, result.text_tokens, 0)
    await call.reply(200, result.body)


async def serve_tokens_count(app: EmulatorApp, call: Call, scope: str) -> None:
    try:
        body = json_body(call)
        if body.get("model", "GigaChat") not in MODELS:
            raise RequestRejected(404, "No such model")
        texts = embeddings.input_texts(body)
    except RequestRejected as exc:
        await reject(call, exc)
        return
    counts = [
        {"object": "tokens", "tokens": count_tokens(text), "characters": len(text)}
        for text in texts
    ]
    answer = orjson.dumps(counts)
    await wait(app, call, 0, 0)
    await call.reply(200, answer)


async def serve_models(app: EmulatorApp, call: Call, scope: str) -> None:
    data = [model_entry(spec) for spec in MODELS.values()]
    await call.reply(200, orjson.dumps({"object": "list", "data": data}))


async def serve_model(app: EmulatorApp, call: Call, scope: str) -> None:
    spec = MODELS.get(call.path.rsplit("/", 1)[-1])
    if spec is None:
        await call.reply(404, NO_SUCH_MODEL)
    else:
        await call.reply(200, orjson.dumps(model_entry(spec)))


async def serve_balance(app: EmulatorApp, call: Call, scope: str) -> None:
    if app.config.balance_tokens is None:
        await call.reply(403, FORBIDDEN)
        return
    entries = [{"usage": pool, "value": value} for pool, value in app.balance.items()]
    await call.reply(200, orjson.dumps({"balance": entries}))


async def serve_batches(app: EmulatorApp, call: Call, scope: str) -> None:
    now = time.time()
    try:
        answer = app.batches.handle(call.method, call.query, call.body, app.config, now)
    except batches.PollRefused:
        await too_many(app, call, app.config.retry_after_s, now)
        return
    except RequestRejected as exc:
        await reject(call, exc)
        return
    await call.reply(200, answer)


async def serve_batch_file(app: EmulatorApp, call: Call, scope: str) -> None:
    if call.method != "GET":
        await call.reply(405, METHOD_NOT_ALLOWED)
        return
    try:
        answer = app.batches.file_content(call.path, time.time())
    except RequestRejected as exc:
        await reject(call, exc)
        return
    await call.reply(200, answer, content_type=b"application/octet-stream")
