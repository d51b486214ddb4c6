"""batch.auth.Authenticator on its own: when tokens are fetched, from where, and how often."""

from __future__ import annotations

import time
from typing import Any

import anyio
import httpx
import pytest

from batch import wire
from batch.auth import TOKEN_ATTEMPTS, Authenticator
from batch.errors import AuthenticationFailed, RateLimited, ServerError, TokenUnavailable
from batch.settings import ClientSettings

KEY = "Y2xpZW50OnNlY3JldA=="


class Clock:
    def __init__(self) -> None:
        self.now = 1_763_780_000.0

    def __call__(self) -> float:
        return self.now


class TokenEndpoint:
    """Answers token requests in order from a script, then with fresh tokens."""

    def __init__(self, clock: Clock, life: float = 1800.0, *script: httpx.Response) -> None:
        self.clock = clock
        self.life = life
        self.script = list(script)
        self.sent: list[wire.ApiRequest] = []
        self.sent_at: list[float] = []

    async def __call__(self, request: wire.ApiRequest) -> httpx.Response:
        self.sent.append(request)
        self.sent_at.append(time.monotonic())
        if self.script:
            return self.script.pop(0)
        expires_ms = int((self.clock.now + self.life) * 1000)
        return httpx.Response(
            200, json={"access_token": f"t{len(self.sent)}", "expires_at": expires_ms}
        )


def authenticator(endpoint: TokenEndpoint, clock: Clock, **overrides: Any) -> Authenticator:
    values: dict[str, Any] = {"credentials": KEY, **overrides}
    settings = ClientSettings.from_env({}, **values)
    return Authenticator(settings, endpoint, clock=clock, backoff=0.001)


def test_token_is_reused_while_more_than_60_seconds_remain() -> None:
    clock = Clock()
    endpoint = TokenEndpoint(clock)
    auth = authenticator(endpoint, clock)

    async def main() -> None:
        assert await auth.authorization() == ("Bearer t1", 1)
        clock.now += 1800 - 61
        assert await auth.authorization() == ("Bearer t1", 1)

    anyio.run(main)
    assert len(endpoint.sent) == 1


def test_token_is_refreshed_when_under_60_seconds_remain() -> None:
    clock = Clock()
    endpoint = TokenEndpoint(clock)
    auth = authenticator(endpoint, clock)

    async def main() -> None:
        await auth.authorization()
        clock.now += 1800 - 59
        assert await auth.authorization() == ("Bearer t2", 2)

    anyio.run(main)
    assert len(endpoint.sent) == 2


def test_short_lived_token_is_used_for_half_its_life() -> None:
    clock = Clock()
    endpoint = TokenEndpoint(clock, life=10.0)
    auth = authenticator(endpoint, clock)

    async def main() -> list[str | None]:
        seen = [(await auth.authorization())[0]]
        clock.now += 4.9
        seen.append((await auth.authorization())[0])
        clock.now += 0.2
        seen.append((await auth.authorization())[0])
        return seen

    assert anyio.run(main) == ["Bearer t1", "Bearer t1", "Bearer t2"]


def test_a_401_for_an_already_replaced_token_does_not_refresh_again() -> None:
    clock = Clock()
    endpoint = TokenEndpoint(clock)
    auth = authenticator(endpoint, clock)
    rejection = ServerError("unused")

    async def main() -> None:
        _, old = await auth.authorization()
        await auth.unauthorized(old, rejection)  # refreshes: generation moves on
        await auth.unauthorized(old, rejection)  # a late 401 for the same old token
        assert await auth.authorization() == ("Bearer t2", old + 1)

    anyio.run(main)
    assert len(endpoint.sent) == 2


def test_token_endpoint_errors_are_retried_then_the_last_one_is_raised() -> None:
    clock = Clock()
    busy = [httpx.Response(503, text="busy") for _ in range(TOKEN_ATTEMPTS)]
    endpoint = TokenEndpoint(clock, 1800.0, *busy)
    auth = authenticator(endpoint, clock)

    with pytest.raises(ServerError):
        anyio.run(auth.authorization)
    assert len(endpoint.sent) == TOKEN_ATTEMPTS


def test_token_endpoint_retry_after_is_honoured() -> None:
    clock = Clock()
    limited = httpx.Response(
        429, json={"code": 429, "message": "Too many requests"}, headers={"Retry-After": "0.2"}
    )
    endpoint = TokenEndpoint(clock, 1800.0, limited)
    auth = authenticator(endpoint, clock)

    assert anyio.run(auth.authorization) == ("Bearer t2", 1)
    assert endpoint.sent_at[1] - endpoint.sent_at[0] >= 0.2


def test_rejected_key_is_not_retried() -> None:
    clock = Clock()
    rejected = httpx.Response(401, json={"code": 6, "message": "credentials doesn't match"})
    endpoint = TokenEndpoint(clock, 1800.0, rejected)
    auth = authenticator(endpoint, clock)

    with pytest.raises(AuthenticationFailed):
        anyio.run(auth.authorization)
    assert len(endpoint.sent) == 1


def test_token_storm_on_the_endpoint_is_ridden_out() -> None:
    clock = Clock()
    storm = [httpx.Response(429, json={"code": 429, "message": "Too many"}) for _ in range(3)]
    endpoint = TokenEndpoint(clock, 1800.0, *storm)
    auth = authenticator(endpoint, clock)

    assert anyio.run(auth.authorization)[0] == "Bearer t4"


def test_credentials_are_preferred_over_user_and_password() -> None:
    clock = Clock()
    endpoint = TokenEndpoint(clock)
    auth = authenticator(endpoint, clock, user="alice", password="pw")
    anyio.run(auth.authorization)
    assert endpoint.sent[0].url.endswith("/api/v2/oauth")


def test_user_and_password_are_used_without_credentials() -> None:
    clock = Clock()
    endpoint = TokenEndpoint(clock)
    auth = authenticator(endpoint, clock, credentials=None, user="alice", password="pw")
    anyio.run(auth.authorization)
    assert endpoint.sent[0].url == "/token"


def test_given_access_token_is_used_without_a_token_request() -> None:
    clock = Clock()
    endpoint = TokenEndpoint(clock)
    auth = authenticator(endpoint, clock, access_token="given")
    assert anyio.run(auth.authorization) == ("Bearer given", 0)
    clock.now += 10 * 3600  # a token given directly has no known expiry
    assert anyio.run(auth.authorization) == ("Bearer given", 0)
    assert endpoint.sent == []


def test_client_certificate_alone_needs_no_token_and_a_401_is_fatal() -> None:
    clock = Clock()
    endpoint = TokenEndpoint(clock)
    auth = authenticator(endpoint, clock, credentials=None, cert_file="/c.pem")
    assert anyio.run(auth.authorization) == (None, 0)
    rejection = AuthenticationFailed("Unauthorized", status=401, request_id="r1")

    async def rejected() -> None:
        await auth.unauthorized(0, rejection)

    with pytest.raises(AuthenticationFailed) as info:
        anyio.run(rejected)
    assert info.value.request_id == "r1"
    assert endpoint.sent == []


def test_method_names_the_way_in_without_secrets() -> None:
    clock = Clock()
    endpoint = TokenEndpoint(clock)
    assert "GIGACHAT_API_PERS" in authenticator(endpoint, clock).method
    by_user = authenticator(endpoint, clock, credentials=None, user="alice", password="pw")
    assert by_user.method == "user 'alice'"


def test_requests_queued_behind_a_failed_refresh_share_its_error() -> None:
    clock = Clock()
    busy = [httpx.Response(503, text="busy") for _ in range(10 * TOKEN_ATTEMPTS)]
    endpoint = TokenEndpoint(clock, 1800.0, *busy)
    auth = authenticator(endpoint, clock)
    failures: list[Exception] = []

    async def one() -> None:
        try:
            await auth.authorization()
        except ServerError as exc:
            failures.append(exc)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(one)

    anyio.run(main)
    assert len(failures) == 50
    assert len(endpoint.sent) == TOKEN_ATTEMPTS  # one refresh's attempts, not fifty


def test_after_a_failed_refresh_the_next_request_tries_again() -> None:
    clock = Clock()
    busy = [httpx.Response(503, text="busy") for _ in range(TOKEN_ATTEMPTS)]
    endpoint = TokenEndpoint(clock, 1800.0, *busy)
    auth = authenticator(endpoint, clock)
    with pytest.raises(ServerError):
        anyio.run(auth.authorization)
    assert anyio.run(auth.authorization)[0] == f"Bearer t{TOKEN_ATTEMPTS + 1}"


def test_oauth_429s_that_outlast_the_retries_are_not_the_apis_rate_limit() -> None:
    clock = Clock()
    limited = [
        httpx.Response(429, json={"code": 10, "message": "Too many requests"})
        for _ in range(TOKEN_ATTEMPTS)
    ]
    endpoint = TokenEndpoint(clock, 1800.0, *limited)
    auth = authenticator(endpoint, clock)

    with pytest.raises(TokenUnavailable) as info:
        anyio.run(auth.authorization)
    assert not isinstance(info.value, RateLimited)  # the API's limiter never sees it


def test_after_a_failed_refresh_the_next_one_waits_a_backoff() -> None:
    clock = Clock()
    rejected = httpx.Response(401, json={"code": 6, "message": "credentials doesn't match"})
    endpoint = TokenEndpoint(clock, 1800.0, rejected)
    settings = ClientSettings.from_env({}, credentials=KEY)
    auth = Authenticator(settings, endpoint, clock=clock, backoff=0.3)
    with pytest.raises(AuthenticationFailed):
        anyio.run(auth.authorization)

    assert anyio.run(auth.authorization)[0] == "Bearer t2"
    assert endpoint.sent_at[1] - endpoint.sent_at[0] >= 0.15  # not 1 ms later
