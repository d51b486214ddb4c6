"""Pieces every command shares: the API connection options, and the edge where domain
errors become one line on stderr and an exit code.

Options default to None so that an unset option leaves the `GIGACHAT_*` variable in force.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, MutableMapping
from typing import Any, TypeVar, cast

import click

from batch.cli import EXIT_BUDGET, EXIT_FATAL, EXIT_INTERRUPTED, EXIT_USAGE
from batch.errors import (
    BudgetExhausted,
    ConfigError,
    GigabatchError,
    JobFileError,
    ReportError,
    RunRefused,
)
from batch.settings import ClientSettings

F = TypeVar("F", bound=Callable[..., Any])

# (option declarations, settings field, help); order is the order shown in --help.
_API_OPTIONS: tuple[tuple[tuple[str, ...], str, dict[str, Any]], ...] = (
    (("--base-url",), "base_url", {"help": "API base URL [env GIGACHAT_BASE_URL]."}),
    (("--auth-url",), "auth_url", {"help": "OAuth URL [env GIGACHAT_AUTH_URL]."}),
    (
        ("--credentials",),
        "credentials",
        {
            "help": "Authorization key, base64 [env GIGACHAT_CREDENTIALS]. Prefer the variable: "
            "options show up in the process list."
        },
    ),
    (
        ("--scope",),
        "scope",
        {"help": "GIGACHAT_API_PERS, GIGACHAT_API_B2B or GIGACHAT_API_CORP [env GIGACHAT_SCOPE]."},
    ),
    (("--user",), "user", {"help": "User for password auth [env GIGACHAT_USER]."}),
    (("--password",), "password", {"help": "Password [env GIGACHAT_PASSWORD]."}),
    (
        ("--access-token",),
        "access_token",
        {"help": "A ready access token [env GIGACHAT_ACCESS_TOKEN]."},
    ),
    (
        ("--cert-file",),
        "cert_file",
        {
            "help": "Client certificate for mTLS [env GIGACHAT_CERT_FILE].",
            "type": click.Path(dir_okay=False),
        },
    ),
    (
        ("--key-file",),
        "key_file",
        {
            "help": "Client private key for mTLS [env GIGACHAT_KEY_FILE].",
            "type": click.Path(dir_okay=False),
        },
    ),
    (
        ("--key-file-password",),
        "key_file_password",
        {"help": "Password of the private key [env GIGACHAT_KEY_FILE_PASSWORD]."},
    ),
    (
        ("--ca-bundle-file",),
        "ca_bundle_file",
        {
            "help": "CA bundle to verify the server with, e.g. the Russian Trusted Root CA "
            "[env GIGACHAT_CA_BUNDLE_FILE].",
            "type": click.Path(dir_okay=False),
        },
    ),
    (
        ("--verify-ssl/--no-verify-ssl",),
        "verify_ssl_certs",
        {
            "help": "Verify the server's TLS certificate (default on) "
            "[env GIGACHAT_VERIFY_SSL_CERTS]."
        },
    ),
    (
        ("--timeout",),
        "timeout",
        {
            "help": "Seconds to wait for an answer (read timeout) [env GIGACHAT_TIMEOUT].",
            "type": click.FloatRange(min=0, min_open=True),
        },
    ),
)

API_OPTION_NAMES = tuple(field for _, field, _ in _API_OPTIONS)


def api_options(f: F) -> F:
    """Add the connection and credential options; read them back with settings_from_options."""
    for decls, field, extra in reversed(_API_OPTIONS):
        f = click.option(*decls, field, default=None, show_default=False, **extra)(f)
    return f


def settings_from_options(options: MutableMapping[str, Any]) -> ClientSettings:
    """Pop the api_options values out of a command's keyword arguments and build settings:
    options that were given win, `GIGACHAT_*` variables fill in the rest."""
    given = {name: options.pop(name, None) for name in API_OPTION_NAMES}
    return ClientSettings.from_env(**given)


def exit_code_for(error: GigabatchError) -> int:
    if isinstance(error, ConfigError | JobFileError | RunRefused | ReportError):
        return EXIT_USAGE
    if isinstance(error, BudgetExhausted):
        return EXIT_BUDGET
    return EXIT_FATAL


def cli_errors(f: F) -> F:
    """Turn domain errors into `error: ...` on stderr and the shared exit codes; Ctrl-C
    exits 130 without a traceback."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except GigabatchError as exc:
            click.echo(f"error: {exc}", err=True)
            if isinstance(exc, JobFileError):
                for problem in exc.problems[:20]:
                    click.echo(f"  {problem}", err=True)
                if len(exc.problems) > 20:
                    click.echo(f"  ... and {len(exc.problems) - 20} more", err=True)
            sys.exit(exit_code_for(exc))
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)

    return cast(F, wrapper)
