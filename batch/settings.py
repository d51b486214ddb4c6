"""Client settings: where the API is, how to authenticate, how long to wait.

Read from the same `GIGACHAT_*` variables the official SDK reads, so a user's existing setup
works unchanged; CLI options override them. Secrets are wrapped so they never print.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from batch.errors import ConfigError

DEFAULT_BASE_URL = "https://gigachat.devices.sberbank.ru/api/v1"
DEFAULT_AUTH_URL = "https://ngw.devices.sberbank.ru:9443/api/v2/oauth"
DEFAULT_SCOPE = "GIGACHAT_API_PERS"
# The deadline of one whole request (connect + send + the entire answer). A long LLM answer
# takes a minute or so; against --max-elapsed's 300 s, 90 s leaves a hung request 3 tries.
DEFAULT_TIMEOUT = 90.0
DEFAULT_CONNECT_TIMEOUT = 10.0

ENV_PREFIX = "GIGACHAT_"
AUTH_VARIABLES = "GIGACHAT_CREDENTIALS (with GIGACHAT_SCOPE), GIGACHAT_USER and GIGACHAT_PASSWORD, \
GIGACHAT_ACCESS_TOKEN, or GIGACHAT_CERT_FILE and GIGACHAT_KEY_FILE"

_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off"})


class Secret:
    """A secret string that shows as `***` in repr(), str() and f-strings; `.reveal()` gives
    the value to the one place that must send it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "'***'"

    def __str__(self) -> str:
        return "***"

    def __format__(self, format_spec: str) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        # Immutable: copies (dataclasses.asdict, copy.deepcopy of a config) share it.
        return self

    def __reduce__(self) -> Any:
        # Pickling a secret would write it to disk or a pipe in clear: refuse.
        raise TypeError("a Secret cannot be pickled")


_SECRET_FIELDS = frozenset({"credentials", "password", "access_token", "key_file_password"})


@dataclass(frozen=True)
class ClientSettings:
    """Everything the client needs; build it with `from_env` to honour `GIGACHAT_*`."""

    base_url: str = DEFAULT_BASE_URL
    auth_url: str = DEFAULT_AUTH_URL
    credentials: Secret | None = None
    scope: str = DEFAULT_SCOPE
    user: str | None = None
    password: Secret | None = None
    access_token: Secret | None = None
    cert_file: str | None = None
    key_file: str | None = None
    key_file_password: Secret | None = None
    ca_bundle_file: str | None = None
    verify_ssl_certs: bool = True
    model: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT

    def __post_init__(self) -> None:
        if self.credentials is not None:
            _check_credentials(self.credentials.reveal())
        for name in ("timeout", "connect_timeout"):
            value = getattr(self, name)
            if not value > 0:
                raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")

    @property
    def has_auth(self) -> bool:
        """True when some way to authenticate is configured (token, key, user, or mTLS)."""
        return bool(
            self.access_token or self.credentials or (self.user and self.password) or self.cert_file
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ClientSettings:
        """Settings from `GIGACHAT_<FIELD>` variables (as the SDK names them) in `environ`
        (`os.environ` by default, or any mapping such as `RunningEmulator.client_env()`),
        with every non-None keyword in `overrides` winning over them. Empty variables count
        as unset. Raises ConfigError for malformed values (never echoing a secret)."""
        env = os.environ if environ is None else environ
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(overrides) - fields
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for name in fields:
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is not None and raw.strip() != "":
                values[name] = _from_text(name, raw.strip())
        for name, value in overrides.items():
            if value is not None:
                values[name] = _coerce(name, value)
        return cls(**values)


def _from_text(name: str, raw: str) -> Any:
    """A variable's text as the field's type."""
    variable = ENV_PREFIX + name.upper()
    if name == "verify_ssl_certs":
        lowered = raw.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigError(f"{variable} must be true or false, got {raw!r}")
    if name in ("timeout", "connect_timeout"):
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{variable} must be a number of seconds, got {raw!r}") from None
    return _coerce(name, raw)


def _coerce(name: str, value: Any) -> Any:
    if name in _SECRET_FIELDS and isinstance(value, str):
        return Secret(value)
    if name in ("timeout", "connect_timeout") and isinstance(value, int):
        return float(value)
    return value


def _check_credentials(key: str) -> None:
    """The authorization key is base64 of `client_id:client_secret`; users often paste the
    client secret instead, which OAuth would reject with an opaque message."""
    try:
        base64.b64decode(key, validate=True)
    except (ValueError, binascii.Error):
        raise ConfigError(
            "GIGACHAT_CREDENTIALS is not a base64 authorization key: set it to the "
            "'Authorization key' from the GigaChat console (not the client secret)"
        ) from None
