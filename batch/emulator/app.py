"""The emulator as a raw ASGI app: the state it serves from, and the routing of each request
to its endpoint family (token endpoints in `oauth`, chat in `completions`, the rest of the
API in `resources`, the `/_emulator/*` control endpoints in `control`), every API request
passing through the `pipeline` of outage, storm, authentication, limits, faults and latency.

No framework: the hot path is a dict lookup, one orjson parse and one orjson dump, so a
single process serves thousands of requests/s and never limits a benchmark.
"""

from __future__ import annotations

import random
import time

from batch.emulator import batches, chat
from batch.emulator.call import Call, Receive, Scope, Send
from batch.emulator.completions import serve_chat_legacy, serve_chat_primary
from batch.emulator.config import EmulatorConfig
from batch.emulator.control import serve_control
from batch.emulator.faults import FaultDice
from batch.emulator.limits import RateWindow, StreamLimiter, TokenStore, Window
from batch.emulator.oauth import credentials_for, serve_oauth, serve_password_token
from batch.emulator.pacing import Pacer
from batch.emulator.pipeline import CHAT_POOL, EMBEDDING_POOL, Handler, serve_api
from batch.emulator.replies import METHOD_NOT_ALLOWED, NOT_FOUND
from batch.emulator.resources import (
    serve_balance,
    serve_batch_file,
    serve_batches,
    serve_embeddings,
    serve_model,
    serve_models,
    serve_tokens_count,
)
from batch.emulator.stats import Stats

# path -> (method, handler, needs a stream slot); the other paths are routed in `__call__`.
ROUTES: dict[str, tuple[str, Handler, bool]] = {
    "/api/v1/chat/completions": ("POST", serve_chat_legacy, True),
    "/api/v2/chat/completions": ("POST", serve_chat_primary, True),
    "/api/v1/embeddings": ("POST", serve_embeddings, True),
    "/api/v1/tokens/count": ("POST", serve_tokens_count, True),
    "/api/v1/models": ("GET", serve_models, False),
    "/api/v1/balance": ("GET", serve_balance, False),
}


class EmulatorApp:
    """The ASGI application; all state lives here and on the one event loop serving it."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.stats = Stats()
        self.streams = StreamLimiter()
        self.pacer = Pacer()
        self.tokens = TokenStore()
        self.oauth_rate = RateWindow()
        self.storm = Window()
        self.outage = Window()
        if config.outage_start_s is not None:
            start = time.time() + config.outage_start_s
            self.outage.start(start, config.outage_s)
        self.answered = 0  # API requests answered 200 (for `payment_after`)
        self.cache = chat.PrefixCache()
        self.batches = batches.BatchStore(config.seed)
        self.credentials = credentials_for(config).encode()
        self.seed(config.seed)
        self.balance = self.fresh_balance()
        self.routes = dict(ROUTES)

    def seed(self, seed: int) -> None:
        """Reseed the fault dice and the latency jitter."""
        self.dice = FaultDice(seed)
        self.jitter = random.Random(f"latency-{seed}")

    def fresh_balance(self) -> dict[str, int]:
        tokens = self.config.balance_tokens or 0
        return {CHAT_POOL: tokens, EMBEDDING_POOL: tokens}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        arrived = time.time()
        message = await receive()
        body: bytes = message.get("body", b"")
        while message.get("more_body"):
            message = await receive()
            body += message.get("body", b"")
        call = Call(scope, body, send, receive, arrived)
        path = call.path
        if path.startswith("/_emulator/"):
            await serve_control(self, call)
            return
        stat_path = path
        try:
            route = self.routes.get(path)
            if route is not None:
                method, handler, limited = route
                if call.method != method:
                    await call.reply(405, METHOD_NOT_ALLOWED)
                else:
                    await serve_api(self, call, handler, limited)
            elif path == "/api/v2/oauth":
                await serve_oauth(self, call)
            elif path == "/api/v1/token":
                await serve_password_token(self, call)
            elif path == "/api/v1/batches":
                await serve_api(self, call, serve_batches, False)
            elif path.startswith("/api/v1/files/") and path.endswith("/content"):
                stat_path = "/api/v1/files/{id}/content"
                await serve_api(self, call, serve_batch_file, False)
            elif path.startswith("/api/v1/models/"):
                stat_path = "/api/v1/models/{id}"
                await serve_api(self, call, serve_model, False)
            else:
                stat_path = "other"
                await call.reply(404, NOT_FOUND)
        finally:
            self.stats.record(stat_path, call.status, arrived)
