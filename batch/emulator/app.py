"""The emulator as a raw ASGI app: routing, authentication, limits, faults, latency, and the
endpoints of the GigaChat API plus the `/_emulator/*` control endpoints.

No framework: the hot path is a dict lookup, one orjson parse and one orjson dump, so a
single process serves thousands of requests/s and never limits a benchmark.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import orjson

from batch.emulator import batches, chat, embeddings
from batch.emulator.call import JSON, Call, Receive, Scope, Send
from batch.emulator.config import SCOPE_STREAM_LIMITS, SCOPES, EmulatorConfig, coerce_knobs
from batch.emulator.faults import HTML_502, FaultDice
from batch.emulator.limits import RateWindow, StreamLimiter, TokenStore, Window, retry_after
from batch.emulator.models import MODELS, model_entry
from batch.emulator.pacing import Pacer
from batch.emulator.stats import Stats
from batch.emulator.tokens import count_tokens

CHAT_POOL = "GigaChat"
EMBEDDING_POOL = "embeddings"


def _error(status: int, message: str) -> bytes:
    return orjson.dumps({"status": status, "message": message})


TOO_MANY = _error(429, "Too many requests")
UNAUTHORIZED = _error(401, "Unauthorized")
EXPIRED = _error(401, "Token has expired")
NOT_FOUND = _error(404, "Not found")
NO_SUCH_MODEL = _error(404, "No such model")
SERVER_ERROR = _error(500, "Internal Server Error")
GATEWAY_TIMEOUT = _error(504, "Gateway Timeout")
FORBIDDEN = _error(403, "Permission denied")
PAYMENT_REQUIRED = _error(402, "Payment required: token balance exhausted")
SERVICE_UNAVAILABLE = _error(503, "Service Unavailable")
METHOD_NOT_ALLOWED = _error(405, "Method not allowed")
# A reset cuts the answer after this many bytes of a body announced as much longer.
RESET_AFTER = b'{"choices":[{"message":{"role":"assistant","content":"'
RESET_ANNOUNCED = b"4096"
# The random-401 fault spares tokens younger than this (a client's retry after a refresh).
FRESH_TOKEN_S = 1.0
# The real API refuses requests over 20 MB.
MAX_BODY_BYTES = 20 * 1024 * 1024


def credentials_for(config: EmulatorConfig) -> str:
    """The base64 authorization key the emulator accepts."""
    return base64.b64encode(f"{config.client_id}:{config.client_secret}".encode()).decode()


def _oauth_error(code: int, message: str) -> bytes:
    return orjson.dumps({"code": code, "message": message})


Handler = Callable[[Call, str], Awaitable[None]]


def _json_body(call: Call) -> Any:
    if len(call.body) > MAX_BODY_BYTES:
        raise chat.RequestRejected(413, "Request body is over 20 MB")
    try:
        data = orjson.loads(call.body)
    except orjson.JSONDecodeError:
        raise chat.RequestRejected(400, "Invalid JSON in request body") from None
    if not isinstance(data, dict):
        raise chat.RequestRejected(400, "Request body must be a JSON object")
    return data


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
        self._seed(config.seed)
        self.balance = self._fresh_balance()
        # path -> (method, handler, needs a stream slot); None handler = public endpoint.
        self.routes: dict[str, tuple[str, Handler, bool]] = {
            "/api/v1/chat/completions": ("POST", self._chat_legacy, True),
            "/api/v2/chat/completions": ("POST", self._chat_primary, True),
            "/api/v1/embeddings": ("POST", self._embeddings, True),
            "/api/v1/tokens/count": ("POST", self._tokens_count, True),
            "/api/v1/models": ("GET", self._models, False),
            "/api/v1/balance": ("GET", self._balance, False),
        }

    def _seed(self, seed: int) -> None:
        self.dice = FaultDice(seed)
        self.jitter = random.Random(f"latency-{seed}")

    def _fresh_balance(self) -> dict[str, int]:
        tokens = self.config.balance_tokens or 0
        return {CHAT_POOL: tokens, EMBEDDING_POOL: tokens}

    # -- ASGI entry -------------------------------------------------------------------

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
            await self._control(call)
            return
        stat_path = path
        try:
            route = self.routes.get(path)
            if route is not None:
                method, handler, limited = route
                if call.method != method:
                    await call.reply(405, METHOD_NOT_ALLOWED)
                else:
                    await self._api(call, handler, limited)
            elif path == "/api/v2/oauth":
                await self._oauth(call)
            elif path == "/api/v1/token":
                await self._password_token(call)
            elif path == "/api/v1/batches":
                await self._api(call, self._batches, False)
            elif path.startswith("/api/v1/files/") and path.endswith("/content"):
                stat_path = "/api/v1/files/{id}/content"
                await self._api(call, self._batch_file, False)
            elif path.startswith("/api/v1/models/"):
                stat_path = "/api/v1/models/{id}"
                await self._api(call, self._model, False)
            else:
                stat_path = "other"
                await call.reply(404, NOT_FOUND)
        finally:
            self.stats.record(stat_path, call.status, arrived)

    # -- the pipeline every API request goes through ----------------------------------

    async def _api(self, call: Call, handler: Handler, limited: bool) -> None:
        now = time.time()
        if self.outage.active(now):
            self.stats.faults["outage"] += 1
            await self._unavailable(call)
            return
        storm = self.storm.remaining(now)
        if storm > 0:
            await self._too_many(call, storm, now)
            return
        scope = await self._authorize(call, now)
        if scope is None:
            return
        payment_after = self.config.payment_after
        if payment_after is not None and self.answered >= payment_after:
            await call.reply(402, PAYMENT_REQUIRED)
            return
        if not limited:
            await handler(call, scope)
            return
        await self._in_stream(call, handler, scope, now)

    async def _in_stream(self, call: Call, handler: Handler, scope: str, now: float) -> None:
        """A request that holds one of its scope's streams while it is served."""
        config = self.config
        limit = config.stream_limit or SCOPE_STREAM_LIMITS[scope]
        if not self.streams.try_acquire(scope, limit):
            await self._too_many(call, config.retry_after_s, now)
            return
        self.stats.concurrency(self.streams.total())
        held = True
        try:
            fault = self.dice.roll(config)
            if fault == "401" and self._fresh_token(call, now):
                fault = None  # the server forgets old tokens: one just issued always works
            if fault == "drip":
                self.stats.faults[fault] += 1
                call.drip_s = config.drip_ms / 1000
                fault = None
            if fault is None:
                await handler(call, scope)
                if call.status == 200:
                    self.answered += 1
                    sent = time.time()
                    self.stats.service(sent - call.arrived)
                    if call.due is not None:
                        self.pacer.observe(sent - call.due)
            else:
                self.stats.faults[fault] += 1
                if fault == "hang":
                    # The answer is lost upstream: the stream is free, the client waits.
                    self.streams.release(scope)
                    held = False
                await self._fault(call, fault, now)
        finally:
            if held:
                self.streams.release(scope)

    def _fresh_token(self, call: Call, now: float) -> bool:
        token = call.headers.get(b"authorization", b"")[7:].decode("latin-1")
        return self.tokens.age(token, now) < FRESH_TOKEN_S

    async def _authorize(self, call: Call, now: float) -> str | None:
        header = call.headers.get(b"authorization", b"")
        if not header.startswith(b"Bearer "):
            await call.reply(401, UNAUTHORIZED)
            return None
        scope, expired = self.tokens.check(header[7:].decode("latin-1"), now)
        if scope is None or expired:
            await call.reply(401, EXPIRED if expired else UNAUTHORIZED)
            return None
        return scope

    async def _too_many(self, call: Call, seconds: float, now: float) -> None:
        header, until = retry_after(self.config.retry_after, seconds, now)
        if header is None:
            await call.reply(429, TOO_MANY)
            return
        self.stats.window(now, until)
        await call.reply(429, TOO_MANY, extra=((b"retry-after", header),))

    async def _fault(self, call: Call, fault: str, now: float) -> None:
        if fault == "5xx":
            await call.reply(500, SERVER_ERROR)
        elif fault == "html_502":
            await call.reply(502, HTML_502, content_type=b"text/html")
        elif fault == "reset":
            await self._cut(call)
        elif fault == "hang":
            if not await call.gone_within(self.config.hang_s):
                await call.reply(504, GATEWAY_TIMEOUT)
        elif fault == "error_body":
            await call.reply(200, TOO_MANY)
        elif fault == "429":
            await call.reply(429, TOO_MANY)
        elif fault == "401":
            await call.reply(401, EXPIRED)
        else:  # storm: this request opens it
            self.storm.start(now, self.config.storm_s)
            await self._too_many(call, self.storm.remaining(now), now)

    async def _cut(self, call: Call) -> None:
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

    async def _unavailable(self, call: Call) -> None:
        """An API request during an outage: no answer (the connection is cut), or a 503."""
        if self.config.outage_mode == "503":
            await call.reply(503, SERVICE_UNAVAILABLE)
        else:
            await self._cut(call)

    def _latency(self, prompt: int, completion: int) -> tuple[float, float]:
        """Seeded latency split into (before the answer starts, while it streams)."""
        config = self.config
        before = (config.latency_base_ms + config.latency_per_prompt_token_ms * prompt) / 1000
        during = config.latency_per_completion_token_ms * completion / 1000
        if config.latency_jitter and before + during > 0:
            factor = 1 + config.latency_jitter * (2 * self.jitter.random() - 1)
            before, during = before * factor, during * factor
        self.stats.latency(before + during)
        return before, during

    async def _wait(self, call: Call, prompt: int, completion: int) -> None:
        """Hold the request until its latency has passed since it arrived: parsing and
        building the answer happen inside that time, as on a real server, and the pacer
        ends the wait early by the timer's mean lateness, so a stream is held for the
        configured latency on average and the capacity is limit / mean latency."""
        before, during = self._latency(prompt, completion)
        due = call.arrived + before + during
        remaining = self.pacer.remaining(due, time.time())
        if remaining > 0:
            call.due = due
            await asyncio.sleep(remaining)

    async def _reject(self, call: Call, exc: chat.RequestRejected) -> None:
        await call.reply(exc.status, _error(exc.status, exc.message))

    def _check_balance(self, pool: str) -> None:
        if self.config.balance_tokens is not None and self.balance[pool] <= 0:
            raise chat.RequestRejected(402, "Payment required: token balance exhausted")

    def _charge(self, pool: str, tokens: int) -> None:
        if self.config.balance_tokens is not None:
            self.balance[pool] = max(0, self.balance[pool] - tokens)

    # -- authentication ---------------------------------------------------------------

    async def _oauth(self, call: Call) -> None:
        self.stats.oauth_calls += 1
        now = time.time()
        config = self.config
        if call.method != "POST":
            await call.reply(405, METHOD_NOT_ALLOWED)
            return
        if not self.oauth_rate.allow(now, config.oauth_rate_per_s) or self.dice.oauth_refused(
            config
        ):
            header, _ = retry_after(config.retry_after, 1.0, now)
            extra = ((b"retry-after", header),) if header else ()
            await call.reply(429, _oauth_error(10, "Too many requests"), extra=extra)
            return
        try:
            rquid = uuid.UUID(call.headers.get(b"rquid", b"").decode("latin-1"))
        except ValueError:
            rquid = None
        if rquid is None or rquid.version != 4:
            await call.reply(400, _oauth_error(5, "RqUID header must be a uuid4"))
            return
        header = call.headers.get(b"authorization", b"")
        if not header.startswith(b"Basic "):
            await call.reply(401, _oauth_error(4, "Can't decode 'Authorization' header"))
            return
        if header[6:].strip() != self.credentials:
            await call.reply(401, _oauth_error(6, "credentials doesn't match db data"))
            return
        scope = parse_qs(call.body.decode("utf-8", "replace")).get("scope", [""])[0]
        if scope not in SCOPES:
            await call.reply(400, _oauth_error(7, "scope is invalid"))
            return
        if scope != config.scope:
            await call.reply(
                400, _oauth_error(7, "scope from db not fully includes consumed scope")
            )
            return
        token, expires = self.tokens.issue(scope, now, config.token_ttl_s)
        await call.reply(
            200, orjson.dumps({"access_token": token, "expires_at": int(expires * 1000)})
        )

    async def _password_token(self, call: Call) -> None:
        self.stats.oauth_calls += 1
        now = time.time()
        header = call.headers.get(b"authorization", b"")
        expected = f"{self.config.user}:{self.config.password}".encode()
        try:
            given = base64.b64decode(header[6:], validate=True)
        except (binascii.Error, ValueError):
            given = b""
        if call.method != "POST" or not header.startswith(b"Basic ") or given != expected:
            await call.reply(401, UNAUTHORIZED)
            return
        token, expires = self.tokens.issue(self.config.scope, now, self.config.token_ttl_s)
        await call.reply(200, orjson.dumps({"tok": token, "exp": int(expires * 1000)}))

    # -- API endpoints ----------------------------------------------------------------

    async def _chat_legacy(self, call: Call, scope: str) -> None:
        await self._chat(call, primary=False)

    async def _chat_primary(self, call: Call, scope: str) -> None:
        await self._chat(call, primary=True)

    async def _chat(self, call: Call, *, primary: bool) -> None:
        now = time.time()
        try:
            body = _json_body(call)
            request = chat.parse_primary(body) if primary else chat.parse_legacy(body)
            self._check_balance(CHAT_POOL)
            session = call.session.decode("latin-1") if call.session else None
            outcome = chat.complete(request, self.config, self.cache, session, now)
        except chat.RequestRejected as exc:
            await self._reject(call, exc)
            return
        tokens = self.stats.tokens
        tokens["prompt"] += outcome.prompt_tokens
        tokens["completion"] += outcome.completion_tokens
        tokens["precached"] += outcome.precached_tokens
        self._charge(CHAT_POOL, outcome.prompt_tokens + outcome.completion_tokens)
        if request.stream:
            message_id = str(uuid.uuid4())
            frames = (
                chat.primary_frames(outcome, message_id)
                if primary
                else chat.legacy_frames(outcome)
            )
            before, during = self._latency(outcome.prompt_tokens, outcome.completion_tokens)
            if before > 0:
                await asyncio.sleep(before)
            await call.stream(frames, during / len(frames))
            return
        answer = (
            chat.primary_body(outcome, str(uuid.uuid4()))
            if primary
            else chat.legacy_body(outcome, request.n)
        )
        await self._wait(call, outcome.prompt_tokens, outcome.completion_tokens)
        await call.reply(200, answer)

    async def _embeddings(self, call: Call, scope: str) -> None:
        try:
            result = embeddings.answer(_json_body(call), self.config)
            self._check_balance(EMBEDDING_POOL)
        except chat.RequestRejected as exc:
            await self._reject(call, exc)
            return
        self.stats.tokens["embedding"] += result.usage
        self._charge(EMBEDDING_POOL, result.usage)
        await self._wait(call, result.text_tokens, 0)
        await call.reply(200, result.body)

    async def _tokens_count(self, call: Call, scope: str) -> None:
        try:
            body = _json_body(call)
            if body.get("model", "GigaChat") not in MODELS:
                raise chat.RequestRejected(404, "No such model")
            texts = embeddings.input_texts(body)
        except chat.RequestRejected as exc:
            await self._reject(call, exc)
            return
        counts = [
            {"object": "tokens", "tokens": count_tokens(text), "characters": len(text)}
            for text in texts
        ]
        answer = orjson.dumps(counts)
        await self._wait(call, 0, 0)
        await call.reply(200, answer)

    async def _models(self, call: Call, scope: str) -> None:
        data = [model_entry(spec) for spec in MODELS.values()]
        await call.reply(200, orjson.dumps({"object": "list", "data": data}))

    async def _model(self, call: Call, scope: str) -> None:
        spec = MODELS.get(call.path.rsplit("/", 1)[-1])
        if spec is None:
            await call.reply(404, NO_SUCH_MODEL)
        else:
            await call.reply(200, orjson.dumps(model_entry(spec)))

    async def _balance(self, call: Call, scope: str) -> None:
        if self.config.balance_tokens is None:
            await call.reply(403, FORBIDDEN)
            return
        entries = [{"usage": pool, "value": value} for pool, value in self.balance.items()]
        await call.reply(200, orjson.dumps({"balance": entries}))

    async def _batches(self, call: Call, scope: str) -> None:
        now = time.time()
        try:
            answer = self.batches.handle(call.method, call.query, call.body, self.config, now)
        except batches.PollRefused:
            await self._too_many(call, self.config.retry_after_s, now)
            return
        except chat.RequestRejected as exc:
            await self._reject(call, exc)
            return
        await call.reply(200, answer)

    async def _batch_file(self, call: Call, scope: str) -> None:
        if call.method != "GET":
            await call.reply(405, METHOD_NOT_ALLOWED)
            return
        try:
            answer = self.batches.file_content(call.path, time.time())
        except chat.RequestRejected as exc:
            await self._reject(call, exc)
            return
        await call.reply(200, answer, content_type=b"application/octet-stream")

    # -- control endpoints (outside /api, never counted) ------------------------------

    def describe(self) -> dict[str, Any]:
        """The running config plus what follows from it."""
        return {
            "config": self.config.to_dict(),
            "stream_limit": self.config.effective_stream_limit,
            "storm_remaining_s": self.storm.remaining(time.time()),
            "outage_remaining_s": self.outage.remaining(time.time()),
        }

    def reconfigure(self, knobs: dict[str, Any]) -> None:
        """Change runtime knobs (ValueError for unknown, fixed or invalid ones);
        `start_storm_s` opens a 429 storm of that many seconds now, `start_outage_s` an
        outage (see `outage_mode`; 0 ends one)."""
        knobs = dict(knobs)
        storm = knobs.pop("start_storm_s", None)
        outage = knobs.pop("start_outage_s", None)
        changes = coerce_knobs(knobs)
        fixed = sorted(
            name for name in changes
            if not EmulatorConfig.__dataclass_fields__[name].metadata["runtime"]
        )
        if fixed:
            raise ValueError(f"cannot change while running: {', '.join(fixed)}")
        self.config = self.config.replace(**changes)
        if "seed" in changes:
            self._seed(self.config.seed)
        if "balance_tokens" in changes:
            self.balance = self._fresh_balance()
        if storm is not None:
            self.storm.start(time.time(), float(storm))
        if outage is not None:
            if float(outage) > 0:
                self.outage.start(time.time(), float(outage))
            else:
                self.outage.end()

    async def _control(self, call: Call) -> None:
        path, method = call.path, call.method
        if path == "/_emulator/stats" and method == "GET":
            query = parse_qs(call.query.decode("latin-1"))
            arrivals = query.get("arrivals", ["1"])[0] != "0"
            snapshot = self.stats.snapshot(arrivals=arrivals)
            snapshot["stream_limit"] = self.config.effective_stream_limit
            snapshot["in_flight"] = self.streams.total()
            await call.reply(200, orjson.dumps(snapshot))
        elif path == "/_emulator/reset" and method == "POST":
            self.stats.reset()
            await call.reply(200, orjson.dumps({"reset": True}))
        elif path == "/_emulator/config" and method == "GET":
            await call.reply(200, orjson.dumps(self.describe()))
        elif path == "/_emulator/config" and method == "POST":
            try:
                self.reconfigure(_json_body(call))
            except chat.RequestRejected as exc:
                await self._reject(call, exc)
                return
            except ValueError as exc:
                await call.reply(422, _error(422, str(exc)))
                return
            await call.reply(200, orjson.dumps(self.describe()))
        else:
            await call.reply(404, NOT_FOUND)
