"""The limits the real service enforces: concurrent streams per scope, token lifetime,
the OAuth request rate, 429 storms and outages, and how a 429 announces when to come back."""

from __future__ import annotations

import collections
import email.utils
import math
import secrets

# Tokens are pruned of expired entries once the store grows past this size.
_TOKEN_PRUNE_AT = 10_000


class StreamLimiter:
    """Requests in flight per scope; a request over the scope's limit is refused."""

    def __init__(self) -> None:
        self.in_flight: dict[str, int] = collections.defaultdict(int)

    def try_acquire(self, scope: str, limit: int) -> bool:
        if self.in_flight[scope] >= limit:
            return False
        self.in_flight[scope] += 1
        return True

    def release(self, scope: str) -> None:
        self.in_flight[scope] -= 1

    def total(self) -> int:
        return sum(self.in_flight.values())


class TokenStore:
    """Access tokens issued by OAuth or /token, each bound to a scope and an expiry."""

    def __init__(self) -> None:
        self._tokens: dict[str, tuple[str, float]] = {}
        self._issued: dict[str, float] = {}

    def issue(self, scope: str, now: float, ttl_s: float) -> tuple[str, float]:
        """A new token and its expiry (unix seconds)."""
        if len(self._tokens) >= _TOKEN_PRUNE_AT:
            self._tokens = {t: v for t, v in self._tokens.items() if v[1] > now}
            self._issued = {t: self._issued[t] for t in self._tokens}
        token = secrets.token_urlsafe(32)
        expires = now + ttl_s
        self._tokens[token] = (scope, expires)
        self._issued[token] = now
        return token, expires

    def age(self, token: str, now: float) -> float:
        """Seconds since `token` was issued (0 for one never issued)."""
        issued = self._issued.get(token)
        return 0.0 if issued is None else now - issued

    def check(self, token: str, now: float) -> tuple[str | None, bool]:
        """(scope, expired): scope None for a token never issued."""
        entry = self._tokens.get(token)
        if entry is None:
            return None, False
        return entry[0], entry[1] <= now


class RateWindow:
    """At most `rate` events in any sliding second (the OAuth endpoint's ~10 req/s)."""

    def __init__(self) -> None:
        self._times: collections.deque[float] = collections.deque()

    def allow(self, now: float, rate: float) -> bool:
        while self._times and self._times[0] <= now - 1.0:
            self._times.popleft()
        if len(self._times) >= rate:
            return False
        self._times.append(now)
        return True


class Window:
    """A span of time during which every API request is refused: a 429 storm, an outage."""

    def __init__(self) -> None:
        self.begins = 0.0
        self.until = 0.0

    def start(self, at: float, seconds: float) -> None:
        """Refuse from `at` (unix seconds, may be in the future) for `seconds`."""
        if at >= self.until:
            self.begins = at
        self.until = max(self.until, at + seconds)

    def end(self) -> None:
        self.until = 0.0

    def remaining(self, now: float) -> float:
        return max(0.0, self.until - now)

    def active(self, now: float) -> bool:
        return self.begins <= now < self.until


def retry_after(style: str, seconds: float, now: float) -> tuple[bytes | None, float]:
    """The Retry-After header value for a wait of `seconds` in `style`, and the moment it
    announces (unix seconds). An HTTP date has whole-second resolution, so it is rounded up;
    delta-seconds keep milliseconds so tests can use short windows."""
    if style == "none":
        return None, now
    if style == "date":
        until = float(math.ceil(now + seconds))
        return email.utils.formatdate(until, usegmt=True).encode(), until
    seconds = math.ceil(seconds * 1000) / 1000
    text = str(int(seconds)) if seconds.is_integer() else f"{seconds:.3f}".rstrip("0")
    return text.encode(), now + seconds
