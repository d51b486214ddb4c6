"""batch.errors: what each answer of the API means, as the engine will act on it."""

from __future__ import annotations

import email.utils
import time

import httpx
import pytest

from batch.errors import (
    ApiError,
    AuthenticationFailed,
    BadRequest,
    FatalError,
    NotFound,
    PayloadTooLarge,
    PaymentRequired,
    PermanentError,
    PermissionDenied,
    RateLimited,
    RequestTimedOut,
    RetryableError,
    ServerError,
    Unprocessable,
    error_from_response,
    error_in_success_body,
    parse_retry_after,
)

NOW = 1_763_780_000.0


def _json(status: int, message: str) -> bytes:
    return f'{{"status": {status}, "message": "{message}"}}'.encode()


# --- Retry-After ---------------------------------------------------------------------------


def test_retry_after_integer_seconds() -> None:
    assert parse_retry_after("7") == 7.0


def test_retry_after_fractional_seconds() -> None:
    assert parse_retry_after("0.5") == 0.5


def test_retry_after_http_date_is_seconds_from_now() -> None:
    header = email.utils.formatdate(NOW + 12, usegmt=True)
    assert parse_retry_after(header, now=NOW) == pytest.approx(12.0)


def test_retry_after_http_date_in_the_past_is_zero() -> None:
    header = email.utils.formatdate(NOW - 30, usegmt=True)
    assert parse_retry_after(header, now=NOW) == 0.0


def test_retry_after_absent_is_none() -> None:
    assert parse_retry_after(None) is None


def test_retry_after_empty_is_none() -> None:
    assert parse_retry_after("  ") is None


@pytest.mark.parametrize("garbage", ["soon", "nan", "inf", "-inf", "12 seconds", "Mon, 99 Foo"])
def test_retry_after_garbage_is_none(garbage: str) -> None:
    assert parse_retry_after(garbage, now=NOW) is None


def test_retry_after_negative_seconds_means_now() -> None:
    assert parse_retry_after("-3") == 0.0


def test_429_response_carries_its_retry_after() -> None:
    headers = httpx.Headers({"Retry-After": "2.5"})
    error = error_from_response(429, headers, _json(429, "Too many requests"))
    assert isinstance(error, RateLimited)
    assert error.retry_after == 2.5


def test_429_without_retry_after_has_none() -> None:
    error = error_from_response(429, httpx.Headers(), _json(429, "Too many requests"))
    assert isinstance(error, RateLimited)
    assert error.retry_after is None


def test_429_with_an_http_date_retry_after() -> None:
    headers = httpx.Headers({"Retry-After": email.utils.formatdate(NOW + 4, usegmt=True)})
    error = error_from_response(429, headers, b"", now=NOW)
    assert isinstance(error, RateLimited)
    assert error.retry_after == pytest.approx(4.0)


# --- status codes onto branches ------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls", "branch"),
    [
        (400, BadRequest, PermanentError),
        (404, NotFound, PermanentError),
        (413, PayloadTooLarge, PermanentError),
        (422, Unprocessable, PermanentError),
        (418, PermanentError, PermanentError),
        (401, AuthenticationFailed, FatalError),
        (402, PaymentRequired, FatalError),
        (403, PermissionDenied, FatalError),
        (408, RequestTimedOut, RetryableError),
        (429, RateLimited, RetryableError),
        (500, ServerError, RetryableError),
        (503, ServerError, RetryableError),
        (504, ServerError, RetryableError),
    ],
)
def test_status_maps_to_its_class_and_branch(
    status: int, cls: type[ApiError], branch: type[ApiError]
) -> None:
    error = error_from_response(status, httpx.Headers(), _json(status, "x"))
    assert type(error) is cls
    assert isinstance(error, branch)
    assert error.status == status


def test_402_is_fatal_with_the_server_message() -> None:
    error = error_from_response(402, httpx.Headers(), _json(402, "Payment Required"))
    assert isinstance(error, FatalError)
    assert error.message == "Payment Required"


# --- bodies --------------------------------------------------------------------------------


def test_html_502_from_the_front_proxy_is_a_retryable_server_error_named_by_its_title() -> None:
    page = b"<html>\n<head><title>502 Bad Gateway</title></head>\n<body>nginx</body></html>"
    error = error_from_response(502, httpx.Headers({"Content-Type": "text/html"}), page)
    assert isinstance(error, ServerError)
    assert isinstance(error, RetryableError)
    assert error.message == "502 Bad Gateway"


def test_html_page_without_a_title_is_still_readable() -> None:
    error = error_from_response(503, httpx.Headers(), b"<!DOCTYPE html><p>down</p>")
    assert isinstance(error, ServerError)
    assert error.message == "HTML error page"


def test_oauth_code_message_body_keeps_message_and_code() -> None:
    body = b'{"code": 6, "message": "credentials doesn\'t match db data"}'
    error = error_from_response(401, httpx.Headers(), body)
    assert isinstance(error, AuthenticationFailed)
    assert error.message == "credentials doesn't match db data (code 6)"


def test_plain_text_body_becomes_the_message() -> None:
    error = error_from_response(500, httpx.Headers(), b"upstream connect error")
    assert error.message == "upstream connect error"


def test_empty_body_says_no_message() -> None:
    assert error_from_response(500, httpx.Headers(), b"").message == "no message"


def test_200_with_status_and_no_payload_is_an_error() -> None:
    body = {"status": 429, "message": "Too many requests"}
    assert error_in_success_body(body, payload_keys=("choices",))
    error = error_from_response(200, httpx.Headers(), _json(429, "Too many requests"))
    assert isinstance(error, RateLimited)
    assert error.status == 429


def test_200_with_status_beside_choices_is_a_success() -> None:
    body = {"status": 200, "choices": []}
    assert not error_in_success_body(body, payload_keys=("choices",))


def test_a_bare_array_is_never_an_error_body() -> None:
    assert not error_in_success_body([{"tokens": 1}], payload_keys=())


def test_200_with_a_500_status_body_is_a_server_error() -> None:
    error = error_from_response(200, httpx.Headers(), _json(500, "Internal error"))
    assert isinstance(error, ServerError)


# --- request id and text -------------------------------------------------------------------


def test_every_error_carries_the_x_request_id_header_case_insensitively() -> None:
    headers = httpx.Headers({"x-REQUEST-id": "abc-123"})
    error = error_from_response(404, headers, _json(404, "No such model"))
    assert error.request_id == "abc-123"


def test_error_text_is_one_line_with_status_message_and_request_id() -> None:
    error = error_from_response(
        413, httpx.Headers({"X-Request-ID": "r-9"}), _json(413, "Payload too large")
    )
    assert str(error) == "HTTP 413 Payload too large (request id r-9)"


def test_rate_limited_repr_shows_retry_after() -> None:
    error = RateLimited("Too many requests", request_id="r", retry_after=1.5)
    assert "retry_after=1.5" in repr(error)


def test_retry_after_http_date_in_minus_0000_form_is_utc_whatever_the_local_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TZ", "Asia/Vladivostok")
    time.tzset()
    try:
        header = email.utils.formatdate(NOW + 5)  # RFC 2822 form, zone "-0000"
        assert header.endswith("-0000")
        assert parse_retry_after(header, now=NOW) == pytest.approx(5.0)
    finally:
        monkeypatch.undo()
        time.tzset()


def test_retry_after_ms_is_milliseconds_and_wins_over_retry_after() -> None:
    headers = httpx.Headers({"retry-after-ms": "1500", "retry-after": "60"})
    error = error_from_response(429, headers, _json(429, "Too many requests"))
    assert isinstance(error, RateLimited) and error.retry_after == 1.5


def test_an_unreadable_retry_after_ms_falls_back_to_retry_after() -> None:
    headers = httpx.Headers({"retry-after-ms": "soon", "retry-after": "3"})
    error = error_from_response(429, headers, _json(429, "Too many requests"))
    assert isinstance(error, RateLimited) and error.retry_after == 3.0
