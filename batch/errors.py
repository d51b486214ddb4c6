"""The one error hierarchy of gigabatch, and the pure functions that map API answers onto it.

The engine acts on the branch an error sits in, never on a status code:

    GigabatchError                     anything gigabatch reports to a user
    ├── ConfigError                    settings or credentials missing or malformed (exit 2)
    ├── JobFileError                   a job file that fails validation (exit 2)
    ├── RunRefused                     a resume that would mix answers of other settings (exit 2)
    ├── BudgetExhausted                the next request could cross --max-cost / --max-tokens
    ├── ReportError                    an output directory that cannot be reported on (exit 2)
    ├── CacheUnavailable               the answer cache or journal cannot be opened or written
    ├── ClusterLost                    --ray: the workers or the coordinator are gone (exit 1)
    └── ApiError                       the API answered with an error, or could not be reached
        ├── RetryableError             try the same request again later
        │   ├── RateLimited            429; carries retry_after seconds when the server said
        │   ├── ServerError            5xx, including HTML pages from the front proxy
        │   ├── ConnectionFailed       connect refused, reset mid-response, protocol error
        │   └── RequestTimedOut        no answer within the configured timeout
        ├── PermanentError             this request will never succeed: rows fail, the run goes on
        │   ├── BadRequest             400
        │   ├── NotFound               404 (unknown model)
        │   ├── PayloadTooLarge        413 (over the context window or the input limit)
        │   └── Unprocessable          422 (invalid parameters)
        └── FatalError                 nothing more will succeed: stop the run, commit, exit 1
            ├── AuthenticationFailed   401 after one refresh, or credentials rejected by OAuth
            ├── PaymentRequired        402: the prepaid balance is exhausted
            └── PermissionDenied       403
"""

from __future__ import annotations

import datetime
import email.utils
import math
import time
from collections.abc import Mapping
from typing import Any

import orjson


class GigabatchError(Exception):
    """Anything gigabatch reports to a user; its message is one line, free of secrets."""


class ConfigError(GigabatchError):
    """Settings or credentials are missing or malformed."""


class JobFileError(GigabatchError):
    """A job file failed validation; `problems` lists every problem found (file, line, field)."""

    def __init__(self, message: str, problems: list[Any] | None = None) -> None:
        super().__init__(message)
        self.problems: list[Any] = problems or []


class RunRefused(GigabatchError):
    """Resuming would mix answers produced under different inputs or settings."""


class BudgetExhausted(GigabatchError):
    """The next request could cross the run's cost or token budget."""


class ReportError(GigabatchError):
    """An output directory holds no run to report on, or an unreadable event log."""


class CacheUnavailable(GigabatchError):
    """The answer cache, journal or limit table cannot be opened or written; names the file."""


class ClusterLost(GigabatchError):
    """The Ray cluster lost its workers or its coordinator: the run stops, commits what was
    answered, and exits 1; re-running the same command resumes."""


class ApiError(GigabatchError):
    """The API answered with an error or could not be reached."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.request_id = request_id

    def __str__(self) -> str:
        parts = [f"HTTP {self.status}" if self.status is not None else None, self.message]
        if self.request_id:
            parts.append(f"(request id {self.request_id})")
        return " ".join(p for p in parts if p)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, message={self.message!r}, "
            f"request_id={self.request_id!r})"
        )


class RetryableError(ApiError):
    """Try the same request again later."""


class RateLimited(RetryableError):
    """429 Too Many Requests; `retry_after` is in seconds, None when the server gave none."""

    def __init__(
        self,
        message: str = "Too many requests",
        *,
        status: int | None = 429,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, request_id=request_id)
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return (
            f"RateLimited(status={self.status!r}, message={self.message!r}, "
            f"request_id={self.request_id!r}, retry_after={self.retry_after!r})"
        )


class ServerError(RetryableError):
    """5xx, including HTML pages from the front proxy."""


class ConnectionFailed(RetryableError):
    """The connection was refused, reset mid-response, or broke the protocol."""


class RequestTimedOut(RetryableError):
    """No answer within the configured timeout."""


class PermanentError(ApiError):
    """This request will never succeed: its rows fail, the run goes on."""


class BadRequest(PermanentError):
    """400: the request is malformed."""


class NotFound(PermanentError):
    """404: no such model (or path)."""


class PayloadTooLarge(PermanentError):
    """413: over the model's context window or input limit."""


class Unprocessable(PermanentError):
    """422: invalid parameters."""


class FatalError(ApiError):
    """Nothing more will succeed: stop the run and commit what is done."""


class AuthenticationFailed(FatalError):
    """401 after one refresh, or credentials rejected by the OAuth endpoint."""


class PaymentRequired(FatalError):
    """402: the prepaid token balance is exhausted."""


class PermissionDenied(FatalError):
    """403: this account may not do this."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: AuthenticationFailed,
    402: PaymentRequired,
    403: PermissionDenied,
    404: NotFound,
    408: RequestTimedOut,
    413: PayloadTooLarge,
    422: Unprocessable,
    429: RateLimited,
}


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta-seconds (int or fractional) or an
    HTTP date. Absent, empty, negative-infinite or unparseable values mean "none"."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            # "-0000" parses naive; HTTP dates are always UTC, never the local zone.
            when = when.replace(tzinfo=datetime.timezone.utc)
        current = time.time() if now is None else now
        return max(0.0, when.timestamp() - current)
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


def _body_message(body: bytes) -> tuple[int | None, str | None]:
    """The status and message a JSON error body carries, in the API's `{status, message}`
    or OAuth's `{code, message}` shape; (None, None) for anything else."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    status = data.get("status")
    message = data.get("message")
    code = data.get("code")
    text = str(message) if message is not None else None
    if isinstance(status, int) and not isinstance(status, bool):
        return status, text
    if code is not None and text is not None:
        return None, f"{text} (code {code})"
    return None, text


def _html_title(body: bytes) -> str | None:
    head = body[:4096].decode("utf-8", "replace")
    lower = head.lower()
    if "<html" not in lower and "<!doctype" not in lower:
        return None
    start = lower.find("<title>")
    end = lower.find("</title>")
    if start != -1 and end > start:
        return " ".join(head[start + len("<title>") : end].split()) or "HTML error page"
    return "HTML error page"


def error_from_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
) -> ApiError:
    """The error an HTTP answer means. Also used for a 200 whose body carries `status` and no
    `choices`/`data`: pass the status from the body. `headers` must be case-insensitive
    (httpx.Headers) or lower-cased."""
    body_status, message = _body_message(body)
    if message is None:
        message = _html_title(body)
    if message is None:
        snippet = body[:200].decode("utf-8", "replace").strip()
        message = snippet or "no message"
    request_id = headers.get("x-request-id")
    effective = body_status if status == 200 and body_status is not None else status
    if effective == 429:
        return RateLimited(
            message,
            status=effective,
            request_id=request_id,
            retry_after=parse_retry_after(headers.get("retry-after"), now=now),
        )
    cls = _BY_STATUS.get(effective)
    if cls is None:
        cls = ServerError if effective >= 500 else PermanentError
    return cls(message, status=effective, request_id=request_id)


def error_in_success_body(data: Any, *, payload_keys: tuple[str, ...]) -> bool:
    """True when a 200 body is really an error: a dict with `status` and none of the keys a
    success carries (`choices` for chat, `data` for embeddings and models)."""
    return (
        isinstance(data, dict)
        and "status" in data
        and not any(key in data for key in payload_keys)
    )
