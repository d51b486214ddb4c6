"""Pieces every command shares: the job-kind options (from the kind registry), the API
connection options and the emulator in their place, and the edge where domain errors become
one line on stderr and an exit code.

Options default to None so that an unset option leaves the `GIGACHAT_*` variable in force.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from typing import Any, TypeVar, cast

import click
import orjson

from batch.cli import EXIT_BUDGET, EXIT_FATAL, EXIT_INTERRUPTED, EXIT_USAGE
from batch.errors import BudgetExhausted, ConfigError, GigabatchError, JobFileError, RunRefused
from batch.settings import ClientSettings
from jobs.base import JobKind, KindOption
from jobs.registry import DEFAULT_KIND, cli_options, kind_from_values, kind_names, kinds

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
            "help": "Seconds one request may take in all: connect, send and the whole answer "
            "(default 90; then it is retried) [env GIGACHAT_TIMEOUT].",
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
    if isinstance(error, ConfigError | JobFileError | RunRefused):
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


class KindChoice(click.Choice):  # type: ignore[type-arg]
    """`--kind`'s choices, read from the registry when used, so a kind registered after
    this module was imported (a plugin, a test) is a choice too."""

    def __init__(self) -> None:
        super().__init__([])

    @property  # type: ignore[override]
    def choices(self) -> Sequence[str]:
        return kind_names()

    @choices.setter
    def choices(self, _: Sequence[str]) -> None:
        pass


def _kind_help() -> str:
    described = [f"{name} ({k.summary})" if k.summary else name for name, k in kinds().items()]
    return "What each job line is: " + ", ".join(described) + "."


def _click_option(option: KindOption) -> Callable[[F], F]:
    kind: Any = option.type
    if option.choices:
        kind = click.Choice(option.choices)
    elif option.minimum is not None:
        kind = click.IntRange(min=option.minimum)
    return click.option(
        option.flag,
        option.field,
        type=kind,
        default=option.default,
        show_default=option.default is not None,
        help=option.help,
    )


def kind_options(f: F) -> F:
    """Add `--kind` and every registered kind's options; read them back with build_kind."""
    options = [
        click.option(
            "--kind",
            type=KindChoice(),
            default=DEFAULT_KIND,
            show_default=True,
            help=_kind_help(),
        ),
        *(_click_option(option) for option in cli_options()),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def build_kind(options: MutableMapping[str, Any], model_default: str | None = None) -> JobKind:
    """Pop the kind options out of a command's keyword arguments and build the job kind."""
    name = options.pop("kind")
    values = {o.field: options.pop(o.field, None) for o in cli_options()}
    values["model"] = values.get("model") or model_default
    return kind_from_values(name, values)


max_concurrency_option = click.option(
    "--max-concurrency",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Ceiling on requests in flight; the run finds the server's limit below it.",
)


def _emulator_knobs(pairs: tuple[str, ...]) -> dict[str, Any]:
    knobs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise ConfigError(f"--emulator-option expects KEY=VALUE, got {pair!r}")
        try:
            knobs[key.strip()] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            knobs[key.strip()] = raw
    return knobs


@contextlib.contextmanager
def api_settings(
    options: MutableMapping[str, Any], emulator: bool, profile_name: str, knobs: tuple[str, ...]
) -> Iterator[ClientSettings]:
    """The client settings: from options and GIGACHAT_* variables, or those of an emulator
    started in this process for the duration of the run."""
    if not emulator:
        yield settings_from_options(options)
        return
    from batch.emulator import EmulatorUnavailable, profile, require_server_packages, serve_emulator

    timeout = options.get("timeout")
    settings_from_options(options)  # drop the connection options: the emulator replaces them
    try:
        require_server_packages()
        config = profile(profile_name, **_emulator_knobs(knobs))
    except EmulatorUnavailable as exc:
        raise ConfigError(str(exc)) from None
    except ValueError as exc:
        raise ConfigError(f"emulator: {exc}") from None
    with serve_emulator(config) as emu:
        # The emulator's variables only: the user's GIGACHAT_* point at the real API.
        yield ClientSettings.from_env(emu.client_env(), timeout=timeout)
