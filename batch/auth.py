"""Access tokens for the client: which of the four ways in applies, and single-flight refresh.

Precedence follows the official SDK: a token given directly is used first (until the API
rejects it); new tokens come from the authorization key (OAuth) if set, else from user and
password; with only a client certificate (mTLS) no token is sent. However many requests find
the token stale or get a 401 at the same moment, exactly one token request goes out: the
others wait on the lock and, seeing the generation moved on, use the token it fetched.
The OAuth endpoint's own 429s are its business: they never reach the API's limiter (a
refusal that outlasts the retries is TokenUnavailable), and after a failed refresh the next
one waits a growing backoff instead of starting at once.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable

import anyio
import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
)

from batch import wire
from batch.api_types import AccessToken
from batch.backoff import backoff_delay
from batch.errors import (
    ApiError,
    AuthenticationFailed,
    GigabatchError,
    RateLimited,
    RetryableError,
    TokenUnavailable,
)
from batch.settings import ClientSettings

logger = logging.getLogger(__name__)

Send = Callable[[wire.ApiRequest], Awaitable[httpx.Response]]

# Refresh when less than this much of a token's life is left (the SDK's buffer) - or half its
# life, for the short-lived tokens of tests, so that a fresh token is never "stale" at birth.
REFRESH_MARGIN = 60.0
# The OAuth endpoint allows about 10 requests/s; a few patient retries ride out a storm.
TOKEN_ATTEMPTS = 6
MAX_TOKEN_WAIT = 30.0


class Authenticator:
    """Hands out the Authorization header for API calls and refreshes it, once at a time."""

    def __init__(
        self,
        settings: ClientSettings,
        send: Send,
        *,
        clock: Callable[[], float] = time.time,
        backoff: float = 0.5,
    ) -> None:
        self._settings = settings
        self._send = send
        self._clock = clock
        self._backoff = backoff
        self._lock = anyio.Lock()
        self._token: AccessToken | None = None
        self._margin = REFRESH_MARGIN
        self._generation = 0
        # Refreshes begun, and how the last one failed: requests that queued behind a failed
        # refresh share its error instead of each sending its own doomed token request.
        self._refreshes = 0
        self._failure: GigabatchError | None = None
        self._failed_refreshes = 0  # in a row; the next refresh waits a backoff
        self._retry_at = 0.0  # anyio's clock
        if settings.access_token is not None:
            # A token given directly carries no expiry: use it until the API says 401.
            self._token = AccessToken(settings.access_token.reveal(), math.inf)

    @property
    def can_refresh(self) -> bool:
        """True when new tokens can be fetched (an authorization key or user and password)."""
        s = self._settings
        return s.credentials is not None or bool(s.user and s.password)

    @property
    def method(self) -> str:
        """Which way in is used, for messages: never contains a secret."""
        s = self._settings
        if s.access_token is not None and self._generation == 0:
            return "access token"
        if s.credentials is not None:
            return f"authorization key (scope {s.scope})"
        if s.user and s.password:
            return f"user {s.user!r}"
        if s.access_token is not None:
            return "access token"
        return "client certificate"

    def _usable(self) -> bool:
        token = self._token
        return token is not None and token.expires_at - self._clock() > self._margin

    async def authorization(self) -> tuple[str | None, int]:
        """The Authorization header value (None under mTLS only) and the token generation it
        belongs to; pass the generation back to `unauthorized` if the API rejects it."""
        if self._token is None and not self.can_refresh:
            return None, self._generation
        if self._usable():
            assert self._token is not None
            return f"Bearer {self._token.value}", self._generation
        observed, refreshes = self._generation, self._refreshes
        async with self._lock:
            if self._generation == observed and not self._usable():
                await self._refresh(refreshes)
            assert self._token is not None
            return f"Bearer {self._token.value}", self._generation

    async def unauthorized(self, generation: int, error: ApiError) -> None:
        """The API answered 401 to a request made with `generation`'s token: fetch a new one,
        unless another request already did. Raises AuthenticationFailed when there is no way
        to get a new token."""
        if not self.can_refresh:
            raise AuthenticationFailed(
                f"{error.message}: the {self.method} was rejected and neither GIGACHAT_CREDENTIALS "
                "nor GIGACHAT_USER/GIGACHAT_PASSWORD is set to get a new token",
                status=error.status,
                request_id=error.request_id,
            )
        refreshes = self._refreshes
        async with self._lock:
            if self._generation == generation:
                logger.info("token rejected (%s), fetching a new one", error.message)
                await self._refresh(refreshes)

    async def _refresh(self, refreshes_seen: int) -> None:
        """Fetch a token (caller holds the lock), retrying the token endpoint's 429/5xx; if a
        refresh failed while the caller waited for the lock, raise its error instead."""
        if self._refreshes != refreshes_seen and self._failure is not None:
            raise self._failure
        wait = self._retry_at - anyio.current_time()
        if wait > 0:
            await anyio.sleep(wait)
        self._refreshes += 1
        try:
            await self._fetch_with_retries()
        except GigabatchError as exc:
            self._failure = exc
            self._failed_refreshes += 1
            self._retry_at = anyio.current_time() + backoff_delay(
                self._failed_refreshes - 1, base=self._backoff, cap=MAX_TOKEN_WAIT
            )
            raise
        self._failure = None
        self._failed_refreshes = 0

    async def fetch_once(self) -> None:
        """Fetch a token with one request and no retries (the run's start-up check); the
        token is then used by the calls that follow."""
        async with self._lock:
            self._store(await self._fetch())

    async def _fetch_with_retries(self) -> None:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(TOKEN_ATTEMPTS),
            wait=self._wait,
            retry=retry_if_exception_type(RetryableError),
            sleep=anyio.sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    token = await self._fetch()
        except RateLimited as exc:
            raise TokenUnavailable(
                f"the token endpoint kept answering 429 ({exc.message}) after "
                f"{TOKEN_ATTEMPTS} tries",
                status=exc.status,
                request_id=exc.request_id,
            ) from None
        self._store(token)

    def _store(self, token: AccessToken) -> None:
        now = self._clock()
        self._token = token
        self._margin = min(REFRESH_MARGIN, max(0.0, token.expires_at - now) / 2)
        self._generation += 1
        logger.debug("new token via %s, valid %.0f s", self.method, token.expires_at - now)

    async def _fetch(self) -> AccessToken:
        s = self._settings
        if s.credentials is not None:
            request = wire.oauth_request(s.auth_url, s.credentials.reveal(), s.scope)
        else:
            assert s.user is not None and s.password is not None
            request = wire.password_token_request(s.user, s.password.reveal())
        response = await self._send(request)
        return wire.parse_token(response)

    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome is not None else None
        if isinstance(error, RateLimited) and error.retry_after is not None:
            return min(error.retry_after, MAX_TOKEN_WAIT)
        return backoff_delay(state.attempt_number - 1, base=self._backoff, cap=MAX_TOKEN_WAIT)
