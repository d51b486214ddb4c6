"""The run's start-up check: before the first job, one token and one `GET /models` show that
the URLs, the credentials, TLS and the default model are right.

A wrong setting is not an outage: an OAuth or base URL that refuses connections, a base URL
that answers 404 to everything, an unknown model would otherwise fail (or pause) every job
of the file. Here each is one line naming the URL or the model, within seconds and a
handful of requests (`TRIES` per step, `DEADLINE` in all).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import anyio

from batch.api_types import ModelInfo
from batch.errors import (
    AuthenticationFailed,
    ConfigError,
    FatalError,
    GigabatchError,
    NotFound,
    RetryableError,
    ServiceMisconfigured,
    ServiceUnreachable,
)

if TYPE_CHECKING:
    from batch.client import GigaChatClient

T = TypeVar("T")

TRIES = 3
DEADLINE = 8.0
_SPACING = 0.5  # seconds before the second try, doubled before the third


async def check_service(client: GigaChatClient, model: object) -> None:
    """Raise a FatalError naming what is wrong unless a token (when the settings fetch
    one) and `GET /models` work and `model` (the run's default, if any) is offered."""
    settings = client.settings
    step = "the OAuth endpoint" if settings.credentials is not None else "the token endpoint"
    where = settings.auth_url if settings.credentials is not None else settings.base_url
    with anyio.move_on_after(DEADLINE) as scope:
        if client.auth.can_refresh:
            await _tried(client.auth.fetch_once, lambda e: _token_error(e, step, where))
        step, where = "the API", settings.base_url
        models = await _tried(client.models, lambda e: _api_error(e, where))
    if scope.cancelled_caught:
        raise ServiceUnreachable(
            f"no answer from {step} at {where} within {DEADLINE:g} s: check the URL "
            "(GIGACHAT_AUTH_URL / GIGACHAT_BASE_URL) and the network"
        )
    _check_model(models, model, settings.base_url)


async def _tried(
    call: Callable[[], Awaitable[T]], explain: Callable[[GigabatchError], FatalError]
) -> T:
    """`call`, tried up to TRIES times while it fails in a retryable way; any failure that
    remains becomes the FatalError `explain` makes of it."""
    for attempt in range(TRIES):
        try:
            return await call()
        except RetryableError as exc:
            if attempt + 1 == TRIES:
                raise explain(exc) from None
            await anyio.sleep(_SPACING * 2**attempt)
        except GigabatchError as exc:
            raise explain(exc) from None
    raise AssertionError("unreachable: the last try returns or raises")  # pragma: no cover


def _token_error(exc: GigabatchError, step: str, url: str) -> FatalError:
    if isinstance(exc, RetryableError):
        return ServiceUnreachable(
            f"cannot get a token from {step} at {url}: {exc}; check GIGACHAT_AUTH_URL"
        )
    if isinstance(exc, AuthenticationFailed) and exc.status in (401, 403):
        return exc  # the credentials themselves: their own message says so
    if isinstance(exc, ConfigError):  # TLS: the certificate of the endpoint
        return ServiceMisconfigured(str(exc))
    return ServiceMisconfigured(
        f"{step} at {url} gave no token: {exc}; check GIGACHAT_AUTH_URL "
        "and GIGACHAT_SCOPE"
    )


def _api_error(exc: GigabatchError, url: str) -> FatalError:
    if isinstance(exc, RetryableError):
        return ServiceUnreachable(
            f"cannot use the API at {url}: {exc}; check GIGACHAT_BASE_URL (or try later)"
        )
    if isinstance(exc, NotFound):
        return ServiceMisconfigured(
            f"GET {url.rstrip('/')}/models answered 404 ({exc.message}): GIGACHAT_BASE_URL "
            "must be the API's base, e.g. https://gigachat.devices.sberbank.ru/api/v1"
        )
    if isinstance(exc, FatalError):
        return exc
    if isinstance(exc, ConfigError):
        return ServiceMisconfigured(str(exc))
    return ServiceMisconfigured(f"the API at {url} does not work: {exc}")


def _check_model(models: list[ModelInfo], model: object, url: str) -> None:
    """The default model must be one the API lists (a version suffix `:x` aside)."""
    if not model or not models:
        return
    offered = {m.id for m in models}
    name = str(model)
    if name in offered or name.split(":", 1)[0] in offered:
        return
    raise ServiceMisconfigured(
        f"model {name!r} is not offered by {url} (it offers {', '.join(sorted(offered))}): "
        "check --model / GIGACHAT_MODEL"
    )
