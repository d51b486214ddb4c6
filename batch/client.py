"""The one async GigaChat client of a run, shared by all its workers.

It sends what `batch.wire` builds and hands the answer back to `batch.wire` to parse; the
only I/O is `_send`. It refreshes tokens (through `batch.auth`) but never retries an API error
itself: the engine does, with a run-wide cooldown. Everything it raises is a
`batch.errors.ApiError` (or ConfigError for settings that cannot work).
"""

from __future__ import annotations

import logging
import ssl
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import anyio
import certifi
import httpx

from batch import __version__, batches_wire, wire
from batch.api_types import (
    BalanceEntry,
    BatchInfo,
    ChatCompletion,
    Embeddings,
    ModelInfo,
    TokenCount,
)
from batch.auth import Authenticator
from batch.errors import (
    AuthenticationFailed,
    ConfigError,
    ConnectionFailed,
    RequestTimedOut,
    error_from_response,
)
from batch.settings import AUTH_VARIABLES, ClientSettings
from batch.transport import SendCheck, ShardedPool

logger = logging.getLogger(__name__)

USER_AGENT = f"gigabatch/{__version__}"
T = TypeVar("T")

_warned_insecure = False


def ssl_context(settings: ClientSettings) -> ssl.SSLContext:
    """The TLS context for both the API and OAuth: certifi's roots, or the CA bundle given
    (GigaChat's chain ends at the Russian Trusted Root CA, which certifi lacks), plus the
    client certificate for mTLS. Turning verification off is explicit and warned about once."""
    global _warned_insecure
    if settings.verify_ssl_certs:
        cafile = settings.ca_bundle_file or certifi.where()
        _require_file(cafile, "GIGACHAT_CA_BUNDLE_FILE")
        try:
            context = ssl.create_default_context(cafile=cafile)
        except ssl.SSLError as exc:
            raise ConfigError(f"cannot read CA bundle {cafile}: {exc.reason}") from None
    else:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        if not _warned_insecure:
            _warned_insecure = True
            logger.warning(
                "TLS certificate verification is OFF (GIGACHAT_VERIFY_SSL_CERTS=false or "
                "--no-verify-ssl): use only for development; set GIGACHAT_CA_BUNDLE_FILE instead"
            )
    if settings.cert_file:
        _require_file(settings.cert_file, "GIGACHAT_CERT_FILE")
        if settings.key_file:
            _require_file(settings.key_file, "GIGACHAT_KEY_FILE")
        password = settings.key_file_password.reveal() if settings.key_file_password else None
        try:
            context.load_cert_chain(settings.cert_file, settings.key_file, password)
        except (ssl.SSLError, ValueError):
            # The exception text may quote the key's password prompt: keep our own words.
            raise ConfigError(
                f"cannot load client certificate {settings.cert_file} with key "
                f"{settings.key_file or settings.cert_file}: wrong file or key password "
                "(GIGACHAT_KEY_FILE_PASSWORD)"
            ) from None
    return context


def _require_file(path: str, variable: str) -> None:
    if not Path(path).is_file():
        raise ConfigError(f"{variable}: file {path} does not exist")


def _is_certificate_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _proxy_for(url: str) -> str | None:
    """The proxy the environment names for `url` (HTTPS_PROXY and friends, honouring
    NO_PROXY), as httpx would pick it for a client without a custom transport."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname is None or urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


class GigaChatClient:
    """Async client for the GigaChat REST API; use as `async with GigaChatClient(s) as c:`.

    The connection pool holds `max_connections` (the run's concurrency ceiling) and a request
    waiting for a free connection waits as long as it takes, so queued work never fails with
    a pool timeout (`batch.transport.ShardedPool`). `transport` replaces it, for API and token
    requests alike: tests pass `httpx.MockTransport`, or a `ShardedPool` over a scripted
    network backend to go through the real pool. `send_check` is called right before an
    API request's bytes leave the built pool (a run re-checks its announced pause there).
    """

    def __init__(
        self,
        settings: ClientSettings,
        *,
        max_connections: int = 16,
        transport: httpx.AsyncBaseTransport | None = None,
        send_check: SendCheck | None = None,
    ) -> None:
        if not settings.has_auth:
            raise ConfigError(f"no GigaChat credentials: set {AUTH_VARIABLES}")
        self.settings = settings
        verify: ssl.SSLContext | bool = True if transport is not None else ssl_context(settings)
        api_transport = transport or ShardedPool(
            max_connections,
            verify=verify,
            proxy=_proxy_for(settings.base_url),
            send_check=send_check,
        )
        timeout = httpx.Timeout(
            connect=settings.connect_timeout,
            read=settings.timeout,
            write=settings.timeout,
            pool=None,
        )
        common: dict[str, Any] = {
            "timeout": timeout,
            "verify": verify,
            "headers": {"User-Agent": USER_AGENT},
            "trust_env": True,
        }
        self._http = httpx.AsyncClient(
            base_url=settings.base_url, transport=api_transport, **common
        )
        # API requests skip httpx.AsyncClient's per-request machinery (see `_exchange`); what
        # it would add to each of them is worked out once here.
        self._transport = api_transport
        self._extensions = {"timeout": timeout.as_dict()}
        self._default_headers = {
            name.decode("ascii"): value.decode("latin-1") for name, value in self._http.headers.raw
        }
        self._default_names = {name.lower(): name for name in self._default_headers}
        self._urls: dict[str, httpx.URL] = {}
        # Tokens come through their own small pool (unless a transport was given): a refresh
        # must not queue behind the long-running chat calls that hold every API connection.
        self._auth_http = httpx.AsyncClient(
            base_url=settings.base_url,
            limits=httpx.Limits(max_connections=2, max_keepalive_connections=2),
            transport=transport,
            **common,
        )
        self.auth = Authenticator(settings, self._send_for_token)

    async def __aenter__(self) -> GigaChatClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._auth_http.aclose()

    def __repr__(self) -> str:
        return f"GigaChatClient(base_url={self.settings.base_url!r}, auth={self.auth.method!r})"

    async def chat(
        self, body: Mapping[str, Any], *, session_id: str | None = None
    ) -> ChatCompletion:
        """One chat completion (stream off); `body` is the JSON request body."""
        request = wire.chat_request(body, default_model=self.settings.model)
        return await self._call(request, wire.parse_chat, session_id=session_id)

    async def embeddings(self, inputs: Sequence[str], model: str) -> Embeddings:
        """Vectors for many texts in one request, items sorted by `index`."""
        return await self._call(wire.embeddings_request(inputs, model), wire.parse_embeddings)

    async def tokens_count(self, inputs: Sequence[str], model: str) -> list[TokenCount]:
        """Exact input token counts, one per text, in order."""
        return await self._call(wire.tokens_count_request(inputs, model), wire.parse_tokens_count)

    async def models(self) -> list[ModelInfo]:
        return await self._call(wire.models_request(), wire.parse_models)

    async def balance(self) -> list[BalanceEntry]:
        """Prepaid balance by usage; accounts without prepayment get PermissionDenied (403)."""
        return await self._call(wire.balance_request(), wire.parse_balance)

    async def create_batch(self, method: str, lines: bytes) -> BatchInfo:
        """Upload one batch file (JSONL task lines) for `method`; the batch as created."""
        request = batches_wire.create_request(method, lines)
        return await self._call(request, batches_wire.parse_created)

    async def batch_status(self, batch_id: str | None = None) -> list[BatchInfo]:
        """The status of one batch, or of every batch of the account."""
        request = batches_wire.status_request(batch_id)
        return await self._call(request, batches_wire.parse_status)

    async def download_batch_results(self, output_file_id: str) -> AsyncIterator[str]:
        """The non-empty lines of a batch's output file as they arrive (parse each with
        `batches_wire.parse_task_result`), so a large file is never held whole."""
        request = batches_wire.results_request(output_file_id)
        request_id = str(uuid.uuid4())
        authorization, _ = await self.auth.authorization()
        headers = {"X-Request-ID": request_id}
        if authorization is not None:
            headers["Authorization"] = authorization
        try:
            async with self._http.stream(request.method, request.url, headers=headers) as answer:
                if not 200 <= answer.status_code < 300:
                    await answer.aread()
                    raise error_from_response(answer.status_code, answer.headers, answer.content)
                async for line in answer.aiter_lines():
                    if line.strip():
                        yield line
        except httpx.TimeoutException as exc:
            raise RequestTimedOut(
                f"no answer from {request.url} in time ({type(exc).__name__})",
                request_id=request_id,
            ) from None
        except httpx.TransportError as exc:
            raise ConnectionFailed(
                f"GET {request.url} failed: {type(exc).__name__}: {exc}", request_id=request_id
            ) from None

    async def _call(
        self,
        request: wire.ApiRequest,
        parse: Callable[[httpx.Response], T],
        *,
        session_id: str | None = None,
    ) -> T:
        """Send with the current token; on 401 refresh once (single flight) and retry once."""
        authorization, generation = await self.auth.authorization()
        response = await self._send(self._http, request, authorization, session_id)
        if response.status_code == 401:
            rejected = error_from_response(401, response.headers, response.content)
            await self.auth.unauthorized(generation, rejected)
            authorization, _ = await self.auth.authorization()
            response = await self._send(self._http, request, authorization, session_id)
            if response.status_code == 401:
                again = error_from_response(401, response.headers, response.content)
                raise AuthenticationFailed(
                    f"{again.message} (rejected again after a token refresh via "
                    f"{self.auth.method})",
                    status=401,
                    request_id=again.request_id,
                )
        return parse(response)

    async def _exchange(
        self, request: wire.ApiRequest, headers: Mapping[str, str]
    ) -> httpx.Response:
        """One API request straight through the transport, body read: what `self._http`
        would send (its default headers, timeouts, base URL), without what it does per request
        that an API call does not need (URL parsing and merging, the cookie jar, the auth and
        redirect flows), which costs about as much CPU as the HTTP exchange itself."""
        url = self._urls.get(request.url)
        if url is None:
            url = self._urls[request.url] = self._http.base_url.join(request.url.lstrip("/"))
        merged = self._default_headers.copy()
        for name in headers:
            shadowed = self._default_names.get(name.lower())
            if shadowed is not None:
                del merged[shadowed]
        merged.update(headers)
        sent = httpx.Request(
            request.method, url, headers=merged, content=request.body, extensions=self._extensions
        )
        response = await self._transport.handle_async_request(sent)
        response.request = sent
        try:
            await response.aread()
        except BaseException:
            await response.aclose()
            raise
        return response

    async def _send_for_token(self, request: wire.ApiRequest) -> httpx.Response:
        return await self._send(self._auth_http, request, None, None)

    async def _send(
        self,
        http: httpx.AsyncClient,
        request: wire.ApiRequest,
        authorization: str | None,
        session_id: str | None,
    ) -> httpx.Response:
        """The only I/O: one HTTP exchange, transport failures mapped onto the error tree."""
        request_id = str(uuid.uuid4())
        headers = _request_headers(request, request_id, authorization, session_id)
        try:
            # The whole exchange has one deadline: a per-read timeout never fires on an
            # answer that trickles in a byte at a time, nor bounds a slow connect + send.
            with anyio.fail_after(self.settings.timeout):
                if http is self._http:
                    response = await self._exchange(request, headers)
                else:
                    response = await http.request(
                        request.method, request.url, content=request.body, headers=headers
                    )
        except TimeoutError:
            raise RequestTimedOut(
                f"no complete answer from {request.url} within {self.settings.timeout:g} s "
                "(GIGACHAT_TIMEOUT / --timeout)",
                request_id=request_id,
            ) from None
        except (httpx.TransportError, OSError) as exc:
            # OSError: TLS alerts (ssl.SSLError) can surface from the socket layer unmapped.
            raise _transport_failure(exc, http, request, request_id) from None
        return _received(response, request, request_id)


def _request_headers(
    request: wire.ApiRequest, request_id: str, authorization: str | None, session_id: str | None
) -> dict[str, str]:
    """The headers of one exchange: ours, the request's own, the token and the session."""
    headers = {"X-Request-ID": request_id, **request.headers}
    if authorization is not None:
        headers["Authorization"] = authorization
    if session_id is not None:
        headers["X-Session-ID"] = session_id
    return headers


def _transport_failure(
    exc: httpx.TransportError | OSError,
    http: httpx.AsyncClient,
    request: wire.ApiRequest,
    request_id: str,
) -> RequestTimedOut | ConfigError | ConnectionFailed:
    """What a failed exchange raises: a timeout, an untrusted certificate (a setting to
    fix, not an outage) or a connection failure."""
    if isinstance(exc, httpx.TimeoutException):
        return RequestTimedOut(
            f"no answer from {request.url} in time ({type(exc).__name__})",
            request_id=request_id,
        )
    if _is_certificate_failure(exc):
        return ConfigError(
            f"TLS certificate of {http.base_url.join(request.url).host} not trusted: set "
            "GIGACHAT_CA_BUNDLE_FILE to the Russian Trusted Root CA bundle "
            "(or GIGACHAT_VERIFY_SSL_CERTS=false for development only)"
        )
    return ConnectionFailed(
        f"{request.method} {request.url} failed: {type(exc).__name__}: {exc}",
        request_id=request_id,
    )


def _received(
    response: httpx.Response, request: wire.ApiRequest, request_id: str
) -> httpx.Response:
    """The answer, logged, carrying a request id, and holding its body without a cycle."""
    logger.debug(
        "%s %s -> %s (request id %s)",
        request.method,
        request.url,
        response.status_code,
        response.headers.get("x-request-id", request_id),
    )
    if "x-request-id" not in response.headers:
        # Errors name the request id; when the server echoed none, ours is the one to quote.
        response.headers["X-Request-ID"] = request_id
    # Through httpx.AsyncClient (the token requests) a response and its BoundAsyncStream
    # point at each other, so each body would wait for the cyclic GC, dozens at a time.
    # The body is read already: a plain stream over the same bytes leaves no cycle and
    # no transport object behind, and the response is freed once the caller has parsed it.
    response.stream = httpx.ByteStream(response.content)
    return response
