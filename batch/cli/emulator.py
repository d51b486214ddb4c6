"""`gigabatch emulator`: run the local GigaChat emulator until Ctrl-C. Every knob of
EmulatorConfig is an option, generated from the config so the two never drift apart."""

from __future__ import annotations

import shlex
import time
import typing
from collections.abc import Callable, Mapping
from typing import Any

import click

from batch.cli import main
from batch.emulator import (
    PROFILES,
    EmulatorUnavailable,
    profile,
    require_server_packages,
    serve_emulator,
)
from batch.emulator.config import knob_fields, knob_types

F = typing.TypeVar("F", bound=Callable[..., Any])


def _knob_options(command: F) -> F:
    hints = knob_types()
    for knob in reversed(knob_fields()):
        hint = hints[knob.name]
        flag = "--" + knob.name.replace("_", "-")
        help_text = f"{knob.metadata['help']} [default: {knob.default!r}]"
        if typing.get_origin(hint) is tuple:
            option = click.option(flag, knob.name, multiple=True, default=None, help=help_text)
        else:
            base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
            option = click.option(flag, knob.name, type=base, default=None, help=help_text)
        command = option(command)
    return command


def export_lines(env: Mapping[str, str]) -> str:
    """`export NAME=value` lines a POSIX shell can paste, one per variable."""
    return "\n".join(f"export {name}={shlex.quote(value)}" for name, value in env.items())


@main.command("emulator")
@click.option(
    "--profile",
    "profile_name",
    type=click.Choice(list(PROFILES)),
    default="b2b",
    show_default=True,
    help="Named starting point; other options override it.",
)
@click.option(
    "--print-env",
    is_flag=True,
    help="Print only the `export GIGACHAT_...` lines on stdout (the rest goes to stderr).",
)
@_knob_options
def emulator_command(profile_name: str, print_env: bool, **knobs: Any) -> None:
    """Run a local GigaChat emulator: the real API's protocol, limits and failures.

    It speaks OAuth (/api/v2/oauth), /api/v1/token, chat completions (plain and
    streaming, v1 and v2 shapes), embeddings, tokens/count, models and balance, and the
    official SDK works against it unchanged. Answers are deterministic functions of the
    request; put [[answer_tokens=N]] in a prompt to set the answer length.

    \b
    Profiles:
      pers   GIGACHAT_API_PERS: 1 stream, 200 ms + 5 ms/completion token
      b2b    GIGACHAT_API_B2B: 10 streams, 100 ms + 2 ms/completion token
      corp   as b2b with GIGACHAT_API_CORP
      storm  b2b + 2% chance per request of a 2 s storm of 429s
      flaky  b2b + a few % of 5xx, HTML 502, resets, hangs and 200-with-error bodies
      fast   no latency, no practical limit (benchmarks)

    Stats: GET /_emulator/stats, reset: POST /_emulator/reset, change knobs while it
    runs: POST /_emulator/config with a JSON object of knobs ({"stream_limit": 2}, or
    {"start_storm_s": 3} to start a 429 storm now).

    It prints `export GIGACHAT_...=...` lines to paste into another shell, which points
    gigabatch (and the official SDK) at it.

    \b
    Example:
      gigabatch emulator --profile b2b --port 8080 --stream-limit 4 --retry-after date
      gigabatch emulator --port 8080 --print-env > emulator.env &   # then: . ./emulator.env
    """
    overrides = {name: value for name, value in knobs.items() if value not in (None, ())}
    try:
        config = profile(profile_name, **overrides)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        require_server_packages()
    except EmulatorUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    try:
        with serve_emulator(config) as emu:
            about = [
                f"GigaChat emulator (profile {profile_name}) listening on {emu.origin}",
                f"  scope:      {emu.scope} ({config.effective_stream_limit} streams)",
                f"  user / password (for /api/v1/token): {emu.user} / {emu.password}",
                f"  stats:      {emu.origin}/_emulator/stats",
                "Point a shell at it (the key is the emulator's own test key, not a secret):",
            ]
            click.echo("\n".join(about), err=print_env)
            click.echo(export_lines(emu.client_env()))
            click.echo("Press Ctrl-C to stop.", err=print_env)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        click.echo("stopped", err=print_env)
