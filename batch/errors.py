"""The one error hierarchy of gigabatch, and the pure functions that map API answers onto it.

The engine acts on the branch an error sits in, never on a status code:

    GigabatchError                     anything gigabatch reports to a user
    ├── ConfigError                    settings or credentials missing or malformed (exit 2)
    ├── JobFileError                   a job file that fails validation (exit 2)
    ├── RunRefused                     a resume that would mix answers of other settings (exit 2)
    ├── BudgetExhausted                the next request could cross --max-cost / --max-tokens
    ├── ReportError                    an output directory that cannot be reported on (exit 2)
    ├── CacheUnavailable               the answer cache or journal cannot be opened or written
    ├── RunStopped                     a run that ended short of every job succeeding (API only)
    │   ├── RowsFailed                 it finished, some rows failed (exit 3)
    │   ├── RunInterrupted             Ctrl-C or SIGTERM stopped it (exit 130 / 143)
    │   └── RunTimedOut                it waited longer than --completion-timeout (exit 1)
    ├── OutputError                    the output directory cannot be read or written (exit 1)
    ├── OutputLocked                   another run holds the output directory (exit 5)
    ├── Interrupted                    a signal before anything was sent (exit 130 / 143)
    ├── ClusterLost                    --ray: the workers or the coordinator are gone (exit 1)
    └── ApiError                       the API answered with an error, or could not be reached
        ├── RetryableError             try the same request again later
        │   ├── RateLimited            429; carries retry_after seconds when the server said
        │   ├── ServerError            5xx, including HTML pages from the front proxy
        │   ├── ConnectionFailed       connect refused, reset mid-response, protocol error
        │   ├── RequestTimedOut        no complete answer within the whole-request deadline
        │   ├── TokenUnavailable       the OAuth endpoint kept refusing (429) token requests
        │   └── SendHeld               a run-wide pause began before the request left: not sent
        ├── PermanentError             this request will never succeed: rows fail, the run goes on
        │   ├── BadRequest             400
        │   ├── NotFound               404 (unknown model)
        │   ├── PayloadTooLarge        413 (over the context window or the input limit)
        │   └── Unprocessable          422 (invalid parameters)
        └── FatalError                 nothing more will succeed: stop the run, commit, exit 1
            ├── AuthenticationFailed   401 after one refresh, or credentials rejected by OAuth
            ├── PaymentRequired        402: the prepaid balance is exhausted
            ├── PermissionDenied       403
            ├── RetryAfterTooLong      429 asking for a longer pause than --max-retry-after
            ├── ServiceUnreachable     API or OAuth unreachable at the start, or past --max-outage
            └── ServiceMisconfigured   a URL that answers 404 to everything, an unknown model
"""

from __future__ import annotations

import datetime
import email.utils
import math
import signal
import sys
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import orjson

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from batch.summary import RunSummary


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


class RunStopped(GigabatchError):
    """A run that ended short of every job succeeding: `summary` is what it did (also in
    OUT/summary.json), `exit_code` what `gigabatch run` exits with in the same case. Raised
    by the Python API; the command line prints the summary and exits instead."""

    exit_code = 1

    def __init__(self, message: str, summary: RunSummary, *, exit_code: int | None = None):
        super().__init__(message)
        self.summary = summary
        if exit_code is not None:
            self.exit_code = exit_code


class RowsFailed(RunStopped):
    """Every job was answered, some rows failed (they are in OUT/failed/)."""

    exit_code = 3


class RunInterrupted(RunStopped):
    """Ctrl-C (exit 130) or SIGTERM (exit 143) stopped the run; answered jobs are committed."""

    exit_code = 130


class RunTimedOut(RunStopped):
    """The run waited for the batch API longer than its completion timeout; rerun to resume."""


class OutputError(GigabatchError):
    """The output directory cannot be read or written: the message names the path and the
    errno, or the file that is damaged and what to do about it."""


class OutputLocked(GigabatchError):
    """Another process runs into the same output directory; the message names it."""


class Interrupted(GigabatchError):
    """Ctrl-C or SIGTERM before the run's workers existed (validating, or the start-up
    check): no job was sent."""

    def __init__(self, signum: int, during: str = "while validating; nothing was sent") -> None:
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        super().__init__(f"interrupted ({name}) {during}")
        self.signum = signum


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
    """No complete answer within the whole-request deadline (GIGACHAT_TIMEOUT)."""


class TokenUnavailable(RetryableError):
    """The OAuth endpoint kept refusing token requests with 429: not the API's limit."""


class SendHeld(RetryableError):
    """A run-wide pause began after the request passed the limiter and before its bytes
    left: it was not sent, and goes again once the pause is over."""


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


class RetryAfterTooLong(FatalError):
    """A 429 asked for a pause longer than the run may wait: stop now, resume later."""

    def __init__(self, retry_after: float, cap: float, cause: RateLimited) -> None:
        super().__init__(
            f"the server asked to wait {retry_after:.0f} s (Retry-After), over "
            f"--max-retry-after {cap:.0f} s; answered jobs are committed, run again later",
            status=cause.status,
            request_id=cause.request_id,
        )
        self.retry_after = retry_after


class ServiceUnreachable(FatalError):
    """The API or its OAuth endpoint could not be reached when the run began, or stayed
    unreachable for longer than --max-outage."""


class ServiceMisconfigured(FatalError):
    """The settings point at something that is not a usable GigaChat: a base URL that
    answers 404 to everything, an OAuth URL that gives no token, an unknown model, TLS."""


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


def retry_after_of(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """The pause a 429 asks for: `retry-after-ms` (milliseconds, as OpenAI's servers send)
    wins over `Retry-After` (seconds or an HTTP date); None when neither says."""
    try:
        millis = float(headers.get("retry-after-ms") or "nan")
    except ValueError:
        millis = math.nan
    if math.isfinite(millis):
        return max(0.0, millis / 1000)
    return parse_retry_after(headers.get("retry-after"), now=now)


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
            retry_after=retry_after_of(headers, now=now),
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


def single_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """What to raise for an exception group out of a task group: its first domain error
    (a run stops for its first reason), else a KeyboardInterrupt in it, else its only
    exception; the group itself when it holds several exceptions of other kinds."""
    leaves = list(_leaves(group))
    for wanted in (GigabatchError, KeyboardInterrupt):
        for leaf in leaves:
            if isinstance(leaf, wanted):
                return leaf
    return leaves[0] if len(leaves) == 1 else group


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
