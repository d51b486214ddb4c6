"""`gigabatch models` and `gigabatch balance`: one request each, proving that the settings,
the credentials and the TLS set-up work before a long run is started."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import anyio
import click
import orjson

from batch.api_types import BalanceEntry, ModelInfo
from batch.cli import main
from batch.cli.common import api_options, api_settings, cli_errors, emulator_options
from batch.client import GigaChatClient
from batch.settings import ClientSettings


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = [header, *rows]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _print_json(data: Any) -> None:
    click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


async def _models(settings: ClientSettings) -> list[ModelInfo]:
    async with GigaChatClient(settings, max_connections=1) as client:
        return await client.models()


async def _balance(settings: ClientSettings) -> list[BalanceEntry]:
    async with GigaChatClient(settings, max_connections=1) as client:
        return await client.balance()


def _value(value: float) -> str:
    return str(int(value)) if value.is_integer() else str(value)


@main.command()
@api_options
@emulator_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
@cli_errors
def models(
    as_json: bool,
    emulator: bool,
    emulator_profile: str,
    emulator_knobs: tuple[str, ...],
    **options: Any,
) -> None:
    """List the models your credentials can use (id, type, owner).

    Types: chat, embedder, aicheck, filter. Credentials and URLs come from the GIGACHAT_*
    variables (the official SDK's) or the options below.

    \b
    Example:
      GIGACHAT_CREDENTIALS=... GIGACHAT_CA_BUNDLE_FILE=russian_trusted_root_ca.pem \\
        gigabatch models
      gigabatch models --emulator
    """
    with api_settings(options, emulator, emulator_profile, emulator_knobs) as settings:
        found = anyio.run(_models, settings)
    if as_json:
        _print_json([asdict(model) for model in found])
        return
    rows = [(m.id, m.type, m.owned_by) for m in found]
    click.echo(_table(("id", "type", "owned_by"), rows))


@main.command()
@api_options
@emulator_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
@cli_errors
def balance(
    as_json: bool,
    emulator: bool,
    emulator_profile: str,
    emulator_knobs: tuple[str, ...],
    **options: Any,
) -> None:
    """Show the prepaid token balance left, by usage (model family).

    Only prepaid accounts have one: others get "HTTP 403" (exit 1).

    \b
    Example:
      GIGACHAT_CREDENTIALS=... GIGACHAT_SCOPE=GIGACHAT_API_B2B gigabatch balance --json
      gigabatch balance --emulator --emulator-option balance_tokens=1000000
    """
    with api_settings(options, emulator, emulator_profile, emulator_knobs) as settings:
        entries = anyio.run(_balance, settings)
    if as_json:
        _print_json([asdict(entry) for entry in entries])
        return
    rows = [(e.usage, _value(e.value)) for e in entries]
    click.echo(_table(("usage", "tokens"), rows))
