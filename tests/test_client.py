"""GigaChatClient over httpx.MockTransport: auth flows, single-flight refresh, headers, and
how every kind of failure maps onto the error tree."""

from __future__ import annotations

import contextlib
import http.server
import logging
import ssl
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
import trustme
from cryptography.hazmat.primitives import serialization

import batch.client
from batch import __version__
from batch.api_types import ChatCompletion
from batch.client import GigaChatClient, _proxy_for, ssl_context
from batch.emulator import profile, serve_emulator
from batch.errors import (
    AuthenticationFailed,
    ConfigError,
    ConnectionFailed,
    NotFound,
    PaymentRequired,
    RateLimited,
    RequestTimedOut,
    RetryableError,
    ServerError,
)
from batch.settings import ClientSettings
from batch.transport import ShardedPool

BASE = "http://api.test/api/v1"
AUTH = "http://auth.test/api/v2/oauth"
KEY = "Y2xpZW50OnNlY3JldC12YWx1ZQ=="  # base64("client:secret-value")
CHAT_OK = {
    "choices": [{"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "model": "GigaChat:2.0.28.2",
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
}
HELLO = {"messages": [{"role": "user", "content": "hello"}]}


class FakeGigaChat:
    """A scripted GigaChat: issues numbered tokens, accepts only the current one, and lets a
    test queue special answers per path."""

    def __init__(self, *, token_life: float = 1800.0, oauth_delay: float = 0.0) -> None:
        self.token_life = token_life
        self.oauth_delay = oauth_delay
        self.issued = 0
        self.valid: set[str] = set()
        self.requests: list[httpx.Request] = []
        self.statuses: Counter[int] = Counter()
        self.scripted: dict[str, list[httpx.Response]] = {}

    @property
    def oauth_calls(self) -> int:
        return sum(1 for r in self.requests if r.url.path.endswith(("/oauth", "/token")))

    def script(self, path: str, *responses: httpx.Response) -> None:
        self.scripted.setdefault(path, []).extend(responses)

    def revoke_all(self) -> None:
        self.valid.clear()

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        response = await self._answer(request)
        self.statuses[response.status_code] += 1
        return response

    async def _answer(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        queued = self.scripted.get(path)
        if queued:
            return queued.pop(0)
        if path.endswith("/oauth") or path.endswith("/token"):
            if self.oauth_delay:
                await anyio.sleep(self.oauth_delay)
            self.issued += 1
            token = f"token-{self.issued}"
            self.valid = {token}
            expires_ms = int((time.time() + self.token_life) * 1000)
            if path.endswith("/token"):
                return httpx.Response(200, json={"tok": token, "exp": expires_ms})
            return httpx.Response(200, json={"access_token": token, "expires_at": expires_ms})
        auth = request.headers.get("authorization", "")
        if auth.removeprefix("Bearer ") not in self.valid:
            return httpx.Response(
                401,
                json={"status": 401, "message": "Token has expired"},
                headers={"X-Request-ID": "rid-401"},
            )
        if path.endswith("/chat/completions"):
            return httpx.Response(200, json=CHAT_OK, headers={"X-Request-ID": "rid-chat"})
        if path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "GigaChat", "type": "chat"}]})
        return httpx.Response(404, json={"status": 404, "message": "No such path"})


def settings(**overrides: Any) -> ClientSettings:
    values: dict[str, Any] = {"base_url": BASE, "auth_url": AUTH, "credentials": KEY}
    values.update(overrides)
    return ClientSettings.from_env({}, **values)


def make_client(fake: FakeGigaChat, **overrides: Any) -> GigaChatClient:
    client = GigaChatClient(settings(**overrides), transport=httpx.MockTransport(fake))
    client.auth._backoff = 0.001  # keep OAuth retry backoff out of the test's runtime
    return client


def run(fn: Callable[[], Awaitable[Any]]) -> Any:
    return anyio.run(fn)


async def concurrently(n: int, call: Callable[[], Awaitable[Any]]) -> list[Any]:
    results: list[Any] = []

    async def one() -> None:
        results.append(await call())

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
    return results


# --- single flight -------------------------------------------------------------------------


def test_200_concurrent_calls_without_a_token_make_one_oauth_request() -> None:
    fake = FakeGigaChat(oauth_delay=0.01)

    async def main() -> list[Any]:
        async with make_client(fake) as client:
            return await concurrently(200, lambda: client.chat(HELLO))

    results = run(main)
    assert len(results) == 200
    assert fake.oauth_calls == 1


def test_200_concurrent_calls_with_an_expired_token_make_one_oauth_request() -> None:
    fake = FakeGigaChat(token_life=0.2, oauth_delay=0.01)

    async def main() -> list[Any]:
        async with make_client(fake) as client:
            await client.chat(HELLO)
            fake.token_life = 1800.0
            await anyio.sleep(0.25)  # the first token is now past its life
            return await concurrently(200, lambda: client.chat(HELLO))

    results = run(main)
    assert len(results) == 200
    assert fake.oauth_calls == 2
    assert fake.statuses[401] == 0  # the stale token was replaced before being sent


def test_200_concurrent_401s_cause_one_refresh_and_every_call_succeeds() -> None:
    fake = FakeGigaChat(oauth_delay=0.02)

    async def main() -> list[Any]:
        async with make_client(fake) as client:
            await client.models()
            fake.revoke_all()  # the server forgets the token: every call in flight gets 401
            return await concurrently(200, lambda: client.chat(HELLO))

    results = run(main)
    assert len(results) == 200
    assert all(isinstance(r, ChatCompletion) for r in results)
    assert fake.oauth_calls == 2
    assert fake.statuses[401] == 200


def test_401_mid_run_is_retried_once_after_one_refresh() -> None:
    fake = FakeGigaChat()

    async def main() -> ChatCompletion:
        async with make_client(fake) as client:
            await client.chat(HELLO)
            fake.revoke_all()
            return await client.chat(HELLO)

    result = run(main)
    assert result.content == "hi"
    chat_auth = [
        r.headers["authorization"] for r in fake.requests if r.url.path.endswith("/completions")
    ]
    assert chat_auth == ["Bearer token-1", "Bearer token-1", "Bearer token-2"]
    assert fake.oauth_calls == 2


def test_second_401_after_refresh_is_authentication_failed() -> None:
    fake = FakeGigaChat()
    rejected = httpx.Response(401, json={"status": 401, "message": "Unauthorized"})
    fake.script("/api/v1/chat/completions", rejected, rejected)

    async def main() -> None:
        async with make_client(fake) as client:
            await client.chat(HELLO)

    with pytest.raises(AuthenticationFailed) as info:
        run(main)
    assert info.value.status == 401
    assert fake.oauth_calls == 2  # the first token, then exactly one refresh


def test_401_on_given_access_token_without_credentials_is_fatal() -> None:
    fake = FakeGigaChat()

    async def main() -> None:
        async with make_client(fake, credentials=None, access_token="stale") as client:
            await client.chat(HELLO)

    with pytest.raises(AuthenticationFailed, match="GIGACHAT_CREDENTIALS") as info:
        run(main)
    assert info.value.request_id == "rid-401"
    assert fake.oauth_calls == 0


def test_401_on_given_access_token_with_credentials_fetches_a_new_token() -> None:
    fake = FakeGigaChat()

    async def main() -> ChatCompletion:
        async with make_client(fake, access_token="stale") as client:
            return await client.chat(HELLO)

    assert run(main).content == "hi"
    first, oauth, retry = fake.requests
    assert first.headers["authorization"] == "Bearer stale"
    assert oauth.url.path.endswith("/oauth")
    assert retry.headers["authorization"] == "Bearer token-1"


# --- the four ways in ----------------------------------------------------------------------


def test_oauth_request_sends_basic_key_fresh_rquid_and_form_scope() -> None:
    fake = FakeGigaChat()
    fake.script("/api/v2/oauth", httpx.Response(503, text="busy"))

    async def main() -> None:
        async with make_client(fake, scope="GIGACHAT_API_B2B") as client:
            await client.models()

    run(main)
    first, second = (r for r in fake.requests if r.url.path.endswith("/oauth"))
    for request in (first, second):
        assert str(request.url) == AUTH
        assert request.headers["authorization"] == f"Basic {KEY}"
        assert request.headers["content-type"] == "application/x-www-form-urlencoded"
        assert request.content == b"scope=GIGACHAT_API_B2B"
        assert uuid.UUID(request.headers["rquid"]).version == 4
    assert first.headers["rquid"] != second.headers["rquid"]


def test_oauth_429_then_200_obtains_a_token() -> None:
    fake = FakeGigaChat()
    fake.script(
        "/api/v2/oauth",
        httpx.Response(
            429, json={"code": 429, "message": "Too many"}, headers={"Retry-After": "0"}
        ),
    )

    async def main() -> ChatCompletion:
        async with make_client(fake) as client:
            return await client.chat(HELLO)

    assert run(main).content == "hi"
    assert fake.oauth_calls == 2


def test_oauth_html_502_is_retried() -> None:
    fake = FakeGigaChat()
    fake.script("/api/v2/oauth", httpx.Response(502, text="<html><title>502</title></html>"))

    async def main() -> ChatCompletion:
        async with make_client(fake) as client:
            return await client.chat(HELLO)

    assert run(main).content == "hi"


def test_oauth_rejecting_the_key_is_authentication_failed_with_its_message() -> None:
    fake = FakeGigaChat()
    fake.script(
        "/api/v2/oauth",
        httpx.Response(401, json={"code": 6, "message": "credentials doesn't match db data"}),
    )

    async def main() -> None:
        async with make_client(fake) as client:
            await client.models()

    with pytest.raises(AuthenticationFailed, match="credentials doesn't match db data"):
        run(main)
    assert fake.oauth_calls == 1


def test_user_and_password_get_a_token_from_base_url_token() -> None:
    fake = FakeGigaChat()

    async def main() -> None:
        async with make_client(fake, credentials=None, user="alice", password="pw") as client:
            await client.models()

    run(main)
    token_request, models_request = fake.requests
    assert str(token_request.url) == f"{BASE}/token"
    assert token_request.headers["authorization"].startswith("Basic ")
    assert models_request.headers["authorization"] == "Bearer token-1"


def test_credentials_win_over_user_and_password_for_new_tokens() -> None:
    fake = FakeGigaChat()

    async def main() -> None:
        async with make_client(fake, user="alice", password="pw") as client:
            await client.models()

    run(main)
    assert fake.requests[0].url.path.endswith("/oauth")


def test_given_access_token_is_used_before_any_token_request() -> None:
    fake = FakeGigaChat()
    fake.valid = {"given"}

    async def main() -> None:
        async with make_client(fake, access_token="given") as client:
            await client.models()

    run(main)
    assert fake.oauth_calls == 0
    assert fake.requests[0].headers["authorization"] == "Bearer given"


def test_client_certificate_only_sends_no_authorization_header(tmp_path: Path) -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, json={"data": []})

    cert = tmp_path / "client.pem"
    cert.write_text("not used: the transport is mocked")
    configured = settings(credentials=None, cert_file=str(cert))

    async def main() -> None:
        async with GigaChatClient(configured, transport=httpx.MockTransport(handler)) as client:
            await client.models()

    run(main)
    assert "authorization" not in requests[0].headers


def test_no_way_to_authenticate_is_a_config_error_naming_the_variables() -> None:
    with pytest.raises(ConfigError) as info:
        GigaChatClient(settings(credentials=None), transport=httpx.MockTransport(FakeGigaChat()))
    message = str(info.value)
    for variable in ("GIGACHAT_CREDENTIALS", "GIGACHAT_USER", "GIGACHAT_ACCESS_TOKEN"):
        assert variable in message
    assert "\n" not in message


# --- what every request carries ------------------------------------------------------------


def test_requests_carry_user_agent_and_a_fresh_uuid4_request_id() -> None:
    fake = FakeGigaChat()

    async def main() -> None:
        async with make_client(fake) as client:
            await client.models()
            await client.models()

    run(main)
    ids = [r.headers["x-request-id"] for r in fake.requests]
    assert len(set(ids)) == len(ids) == 3
    assert all(uuid.UUID(i).version == 4 for i in ids)
    assert all(r.headers["user-agent"] == f"gigabatch/{__version__}" for r in fake.requests)


def test_session_id_is_sent_only_when_given() -> None:
    fake = FakeGigaChat()

    async def main() -> None:
        async with make_client(fake) as client:
            await client.chat(HELLO, session_id="conv-1")
            await client.chat(HELLO)

    run(main)
    with_session, without = (r for r in fake.requests if r.url.path.endswith("/completions"))
    assert with_session.headers["x-session-id"] == "conv-1"
    assert "x-session-id" not in without.headers


def test_chat_sends_the_body_with_stream_off_and_the_default_model() -> None:
    fake = FakeGigaChat()

    async def main() -> None:
        async with make_client(fake, model="GigaChat-Pro") as client:
            await client.chat({**HELLO, "stream": True, "temperature": 0.3})

    run(main)
    sent = orjson.loads(fake.requests[-1].content)
    assert sent == {**HELLO, "stream": False, "temperature": 0.3, "model": "GigaChat-Pro"}


def test_chat_result_carries_the_server_request_id() -> None:
    fake = FakeGigaChat()

    async def main() -> ChatCompletion:
        async with make_client(fake) as client:
            return await client.chat(HELLO)

    assert run(main).request_id == "rid-chat"


# --- failures onto the error tree ----------------------------------------------------------


def _failing(response: httpx.Response) -> Exception:
    fake = FakeGigaChat()
    fake.script("/api/v1/chat/completions", response)

    async def main() -> None:
        async with make_client(fake) as client:
            await client.chat(HELLO)

    with pytest.raises(Exception) as info:
        run(main)
    return info.value


def test_html_502_from_the_proxy_is_a_retryable_server_error() -> None:
    html = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
    error = _failing(httpx.Response(502, text=html, headers={"X-Request-ID": "rid-502"}))
    assert isinstance(error, ServerError)
    assert isinstance(error, RetryableError)
    assert error.request_id == "rid-502"
    assert "502 Bad Gateway" in str(error)


def test_402_is_payment_required() -> None:
    error = _failing(httpx.Response(402, json={"status": 402, "message": "Payment Required"}))
    assert isinstance(error, PaymentRequired)


def test_429_carries_retry_after() -> None:
    error = _failing(
        httpx.Response(
            429, json={"status": 429, "message": "Too many requests"}, headers={"Retry-After": "3"}
        )
    )
    assert isinstance(error, RateLimited)
    assert error.retry_after == 3.0


def test_200_with_a_status_body_is_an_error() -> None:
    error = _failing(httpx.Response(200, json={"status": 429, "message": "Too many requests"}))
    assert isinstance(error, RateLimited)


def test_unknown_model_is_not_found() -> None:
    error = _failing(httpx.Response(404, json={"status": 404, "message": "No such model"}))
    assert isinstance(error, NotFound)


def test_error_without_a_server_request_id_carries_the_one_sent() -> None:
    fake = FakeGigaChat()
    fake.script("/api/v1/chat/completions", httpx.Response(500, text="oops"))

    async def main() -> None:
        async with make_client(fake) as client:
            await client.chat(HELLO)

    with pytest.raises(ServerError) as info:
        run(main)
    assert info.value.request_id == fake.requests[-1].headers["x-request-id"]


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (httpx.ConnectError("refused"), ConnectionFailed),
        (httpx.ReadError("connection reset by peer"), ConnectionFailed),
        (httpx.RemoteProtocolError("peer closed connection"), ConnectionFailed),
        (httpx.ReadTimeout("timed out"), RequestTimedOut),
        (httpx.ConnectTimeout("timed out"), RequestTimedOut),
        (ssl.SSLError(1, "tlsv13 alert certificate required"), ConnectionFailed),
        (ConnectionResetError(104, "Connection reset by peer"), ConnectionFailed),
    ],
)
def test_transport_failures_map_to_retryable_errors_with_the_request_id(
    raised: Exception, expected: type[Exception]
) -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        raise raised

    async def main() -> None:
        configured = settings(credentials=None, access_token="t")
        async with GigaChatClient(configured, transport=httpx.MockTransport(handler)) as client:
            await client.chat(HELLO)

    with pytest.raises(expected) as info:
        run(main)
    assert isinstance(info.value, RetryableError)
    assert info.value.request_id == sent[0].headers["x-request-id"]


def test_untrusted_server_certificate_is_a_config_error_naming_the_ca_variable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("handshake") from ssl.SSLCertVerificationError(
            1, "certificate verify failed: self-signed certificate in certificate chain"
        )

    async def main() -> None:
        configured = settings(credentials=None, access_token="t")
        async with GigaChatClient(configured, transport=httpx.MockTransport(handler)) as client:
            await client.models()

    with pytest.raises(ConfigError, match="GIGACHAT_CA_BUNDLE_FILE"):
        run(main)


def test_environment_proxy_is_used_unless_no_proxy_names_the_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    assert _proxy_for("https://gigachat.devices.sberbank.ru/api/v1") == "http://proxy.corp:3128"
    assert _proxy_for("https://127.0.0.1:8443/api/v1") is None


def test_pool_never_times_out_and_connects_fast_but_reads_long() -> None:
    client = GigaChatClient(settings(timeout=600))
    assert client._http.timeout.pool is None
    assert client._http.timeout.connect == 10.0
    assert client._http.timeout.read == 600.0
    run(client.aclose)


def test_queued_requests_wait_for_a_connection_and_never_exceed_the_pool() -> None:
    config = profile("fast", stream_limit=100, latency_base_ms=40.0, seed=1)
    with serve_emulator(config) as emu:
        configured = ClientSettings.from_env(emu.client_env())

        async def main() -> list[Any]:
            pool = ShardedPool(6)
            async with GigaChatClient(configured, transport=pool) as client:
                answers = await concurrently(48, lambda: client.chat(HELLO))
                assert pool.in_flight == 0  # every connection was given back
                return answers

        results = run(main)
        stats = emu.stats()
    assert len(results) == 48
    assert stats["peak_concurrency"] == 6
    assert stats["oauth_calls"] == 1


def test_timeout_setting_is_the_read_timeout() -> None:
    client = GigaChatClient(settings(timeout=42))
    assert client._http.timeout.read == 42.0
    run(client.aclose)


class _Trickle(httpx.AsyncByteStream):
    """An answer body that arrives one byte every 20 ms, far longer than any deadline."""

    async def __aiter__(self) -> Any:
        for _ in range(10_000):
            await anyio.sleep(0.02)
            yield b" "


def test_an_answer_that_trickles_in_is_abandoned_at_the_whole_request_deadline() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=_Trickle())

    async def main() -> float:
        configured = settings(credentials=None, access_token="t", timeout=0.3)
        async with GigaChatClient(configured, transport=httpx.MockTransport(handler)) as client:
            started = time.monotonic()
            with pytest.raises(RequestTimedOut, match=r"within 0\.3 s"):
                await client.chat(HELLO)
            return time.monotonic() - started

    # Every read arrives well within a read timeout of 0.3 s: only a deadline ends it.
    assert 0.3 <= run(main) < 1.5


# --- secrets -------------------------------------------------------------------------------

SECRETS = ("c2VjcmV0LWtleQ==", "hunter2-password", "given-access-token", "token-1", "token-2")


def test_secrets_never_appear_in_logs_repr_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake = FakeGigaChat()
    fake.valid = {"given-access-token"}
    fake.script(
        "/api/v1/chat/completions",
        httpx.Response(401, json={"status": 401, "message": "Token has expired"}),
    )
    fake.script("/api/v2/oauth", httpx.Response(429, json={"code": 7, "message": "slow down"}))
    fake.script("/api/v1/models", httpx.Response(500, text="boom"))
    texts: list[str] = []
    errors: list[Exception] = []

    async def main() -> None:
        client = make_client(
            fake,
            credentials=SECRETS[0],
            user="alice",
            password=SECRETS[1],
            access_token=SECRETS[2],
        )
        texts.extend([repr(client), repr(client.settings), str(client.settings)])
        async with client:
            await client.chat(HELLO)
            try:
                await client.models()
            except ServerError as exc:
                errors.append(exc)
        fake.script("/api/v2/oauth", httpx.Response(401, json={"code": 6, "message": "bad"}))
        fake.revoke_all()
        async with make_client(fake, credentials=SECRETS[0], password=SECRETS[1]) as again:
            try:
                await again.chat(HELLO)
            except AuthenticationFailed as exc:
                errors.append(exc)

    run(main)
    assert [type(e) for e in errors] == [ServerError, AuthenticationFailed]
    texts.extend(str(e) for e in errors)
    texts.extend(repr(e) for e in errors)
    texts.append(caplog.text)
    texts.extend(str(r.__dict__) for r in caplog.records)
    everything = "\n".join(texts)
    for secret in SECRETS:
        assert secret not in everything


# --- TLS -----------------------------------------------------------------------------------


def test_verify_off_warns_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(batch.client, "_warned_insecure", False)
    caplog.set_level(logging.WARNING, logger="batch.client")
    insecure = settings(verify_ssl_certs=False)
    contexts = [ssl_context(insecure), ssl_context(insecure)]
    assert all(c.verify_mode == ssl.CERT_NONE and not c.check_hostname for c in contexts)
    warnings = [r for r in caplog.records if "verification is OFF" in r.getMessage()]
    assert len(warnings) == 1


def test_verification_is_on_by_default() -> None:
    context = ssl_context(settings())
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname


def test_ca_bundle_file_builds_a_verifying_context_from_that_file() -> None:
    import certifi

    context = ssl_context(settings(ca_bundle_file=certifi.where()))
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.cert_store_stats()["x509_ca"] > 0


def test_missing_ca_bundle_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "russian_trusted_root_ca.pem"
    with pytest.raises(ConfigError, match=r"russian_trusted_root_ca\.pem"):
        GigaChatClient(settings(ca_bundle_file=str(missing)))


def test_missing_client_certificate_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"GIGACHAT_CERT_FILE.*client\.crt"):
        ssl_context(settings(cert_file=str(tmp_path / "client.crt")))


# --- TLS over real loopback sockets (trustme CA) -------------------------------------------


class _ModelsHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = orjson.dumps({"data": [{"id": "GigaChat", "type": "chat"}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test asserts on the client's side."""


class _QuietTLSServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Refused handshakes are what some tests are about."""


@contextlib.contextmanager
def tls_server(ca: trustme.CA, *, require_client_cert: bool = False) -> Iterator[str]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    if require_client_cert:
        ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
    server = _QuietTLSServer(("127.0.0.1", 0), _ModelsHandler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/api/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _models_over_tls(base_url: str, **overrides: Any) -> list[Any]:
    values: dict[str, Any] = {"base_url": base_url, "credentials": None, **overrides}
    if "cert_file" not in values:
        values["access_token"] = "t"

    async def main() -> list[Any]:
        async with GigaChatClient(ClientSettings.from_env({}, **values)) as client:
            return list(await client.models())

    return list(anyio.run(main))


def test_ca_bundle_verifies_a_server_that_default_trust_rejects(tmp_path: Path) -> None:
    ca = trustme.CA()
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    with tls_server(ca) as url:
        assert _models_over_tls(url, ca_bundle_file=str(bundle))[0].id == "GigaChat"
        with pytest.raises(ConfigError, match="GIGACHAT_CA_BUNDLE_FILE"):
            _models_over_tls(url)


def test_verification_off_reaches_a_self_signed_server() -> None:
    with tls_server(trustme.CA()) as url:
        assert _models_over_tls(url, verify_ssl_certs=False)[0].id == "GigaChat"


def test_client_certificate_authenticates_without_a_token(tmp_path: Path) -> None:
    ca = trustme.CA()
    bundle, cert, key = tmp_path / "ca.pem", tmp_path / "client.crt", tmp_path / "client.key"
    ca.cert_pem.write_to_path(str(bundle))
    issued = ca.issue_cert("client@example.com")
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    with tls_server(ca, require_client_cert=True) as url:
        found = _models_over_tls(
            url, ca_bundle_file=str(bundle), cert_file=str(cert), key_file=str(key)
        )
        assert found[0].id == "GigaChat"
        with pytest.raises(ConnectionFailed):
            _models_over_tls(url, ca_bundle_file=str(bundle))


def test_encrypted_client_key_needs_its_password_which_never_shows(tmp_path: Path) -> None:
    ca = trustme.CA()
    issued = ca.issue_cert("client@example.com")
    private_key = serialization.load_pem_private_key(issued.private_key_pem.bytes(), None)
    cert, key = tmp_path / "client.crt", tmp_path / "client.key"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    key.write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"right-key-pw"),
        )
    )
    files = {"cert_file": str(cert), "key_file": str(key), "credentials": None}
    assert ssl_context(settings(**files, key_file_password="right-key-pw"))
    with pytest.raises(ConfigError) as info:
        ssl_context(settings(**files, key_file_password="wrong-key-pw"))
    assert "wrong-key-pw" not in str(info.value)
    assert "GIGACHAT_KEY_FILE_PASSWORD" in str(info.value)
