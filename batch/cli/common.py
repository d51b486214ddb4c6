"""Pieces every command shares: the job-kind options (from the kind registry), the API
connection options and the emulator in their place, and the edge where domain errors become
one line on stderr and an exit code.

The options themselves are declared in batch/command_options.py (the Python API checks its
keyword arguments against the same tables); here they become Click options.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar, cast

import click

from batch.cli import EXIT_BUDGET, EXIT_FATAL, EXIT_INTERRUPTED, EXIT_LOCKED, EXIT_USAGE
from batch.command_options import (
    API_OPTION_NAMES,
    API_OPTIONS,
    EMULATOR,
    EMULATOR_OPTION,
    EMULATOR_PROFILE,
    KEEP_COLUMNS,
    MAX_CONCURRENCY,
)
from batch.errors import (
    BudgetExhausted,
    ConfigError,
    GigabatchError,
    Interrupted,
    JobFileError,
    OutputLocked,
    ReportError,
    RunRefused,
)
from batch.launch import (
    api_settings,
    build_kind,
    settings_from_options,
)
from batch.options import Option
from batch.output_uri import is_uri
from jobs.registry import DEFAULT_KIND, cli_options, kind_names, kinds

F = TypeVar("F", bound=Callable[..., Any])

__all__ = [
    "API_OPTION_NAMES",
    "api_options",
    "api_settings",
    "build_kind",
    "cli_errors",
    "click_options",
    "kind_options",
    "max_concurrency_option",
    "settings_from_options",
]


def click_option(option: Option) -> Callable[[F], F]:
    """`option` (declared in batch/command_options.py, or a job kind's) as a Click option."""
    decls = (
        [option.flag, option.field]
        if option.short is None
        else [option.flag, option.short, option.field]
    )
    extra: dict[str, Any] = {"help": option.help, "default": option.default}
    if option.switch:
        extra["is_flag"] = True
    elif option.multiple:
        extra["multiple"] = True
    elif not option.flag.count("/"):
        extra["type"] = _click_type(option)
    if option.metavar:
        extra["metavar"] = option.metavar
    extra["show_default"] = option.show_default and option.default is not None
    return click.option(*decls, **extra)


def _click_type(option: Option) -> Any:
    if option.path is not None:
        return click.Path(
            exists=option.path in ("existing_file", "existing_dir"),
            file_okay=option.path in ("file", "existing_file"),
            dir_okay=option.path in ("dir", "existing_dir"),
            path_type=Path if option.type is Path else None,
        )
    if option.choices:
        return click.Choice(option.choices)
    if option.type is int and (option.minimum is not None or option.maximum is not None):
        return click.IntRange(
            min=None if option.minimum is None else int(option.minimum),
            max=None if option.maximum is None else int(option.maximum),
            min_open=option.min_open,
            max_open=option.max_open,
        )
    if option.type is float and (option.minimum is not None or option.maximum is not None):
        return click.FloatRange(
            min=option.minimum,
            max=option.maximum,
            min_open=option.min_open,
            max_open=option.max_open,
        )
    return option.type


def click_options(options: Sequence[Option]) -> Callable[[F], F]:
    """Every option of `options` that the command line offers, in their order."""

    def decorate(f: F) -> F:
        for option in reversed(options):
            if option.surface != "api":
                f = click_option(option)(f)
        return f

    return decorate


def api_options(f: F) -> F:
    """Add the connection and credential options; read them back with settings_from_options."""
    return click_options(API_OPTIONS)(f)


def exit_code_for(error: GigabatchError) -> int:
    if isinstance(error, ConfigError | JobFileError | RunRefused | ReportError):
        return EXIT_USAGE
    if isinstance(error, BudgetExhausted):
        return EXIT_BUDGET
    if isinstance(error, OutputLocked):
        return EXIT_LOCKED
    if isinstance(error, Interrupted):
        return 128 + error.signum
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
            if isinstance(exc, Interrupted):
                _exit_at_once(exit_code_for(exc))
            sys.exit(exit_code_for(exc))
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)

    return cast(F, wrapper)


def _exit_at_once(code: int) -> NoReturn:
    """Exit without the interpreter's teardown, after a signal during validation: nothing
    was sent and nothing is left open (the run lock, the input and an emulator were closed
    on the way here), and unloading the native libraries (pyarrow most) costs ~40 ms of CPU,
    which a loaded machine that gives the process a few percent of a core makes seconds."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


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
        *(click_option(Option.of_kind(option)) for option in cli_options()),
    ]
    for option in reversed(options):
        f = option(f)
    return f


max_concurrency_option = click_option(MAX_CONCURRENCY)
keep_columns_option = click_option(KEEP_COLUMNS)


def emulator_options(f: F) -> F:
    """`--emulator`, `--emulator-profile` and `--emulator-option`, for a command that talks
    to the API; read them back with `api_settings`."""
    return click_options((EMULATOR, EMULATOR_PROFILE, EMULATOR_OPTION))(f)


class OutputLocation(click.ParamType):  # type: ignore[type-arg]
    """An output: a local directory, checked as `click.Path` checks one, or a filesystem
    URI (`s3://bucket/run`), kept as written (a Path would fold its `//`)."""

    name = "DIR|URI"

    def __init__(self, *, exists: bool = False) -> None:
        self.local = click.Path(exists=exists, file_okay=False, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if is_uri(value):
            return value
        return self.local.convert(value, param, ctx)
