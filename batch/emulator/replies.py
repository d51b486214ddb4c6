"""The canned error bodies the emulator answers with, and the parsing of a JSON request body
shared by every endpoint family (with the real API's 20 MB limit)."""

from __future__ import annotations

from typing import Any

import orjson

from batch.emulator.call import Call
from batch.emulator.chat import RequestRejected


def error_body(status: int, message: str) -> bytes:
    return orjson.dumps({"status": status, "message": message})


TOO_MANY = error_body(429, "Too many requests")
UNAUTHORIZED = error_body(401, "Unauthorized")
EXPIRED = error_body(401, "Token has expired")
NOT_FOUND = error_body(404, "Not found")
NO_SUCH_MODEL = error_body(404, "No such model")
SERVER_ERROR = error_body(500, "Internal Server Error")
GATEWAY_TIMEOUT = error_body(504, "Gateway Timeout")
FORBIDDEN = error_body(403, "Permission denied")
PAYMENT_REQUIRED = error_body(402, "Payment required: token balance exhausted")
SERVICE_UNAVAILABLE = error_body(503, "Service Unavailable")
METHOD_NOT_ALLOWED = error_body(405, "Method not allowed")
# The real API refuses requests over 20 MB.
MAX_BODY_BYTES = 20 * 1024 * 1024


def json_body(call: Call) -> Any:
    if len(call.body) > MAX_BODY_BYTES:
        raise RequestRejected(413, "Request body is over 20 MB")
    try:
        data = orjson.loads(call.body)
    except orjson.JSONDecodeError:
        raise RequestRejected(400, "Invalid JSON in request body") from None
    if not isinstance(data, dict):
        raise RequestRejected(400, "Request body must be a JSON object")
    return data


async def reject(call: Call, exc: RequestRejected) -> None:
    await call.reply(exc.status, error_body(exc.status, exc.message))
