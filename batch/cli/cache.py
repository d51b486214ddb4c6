"""`gigabatch cache info` and `gigabatch cache prune`: what the answer cache holds, and
keeping it to an age or a size. The store itself is batch/cache/."""

from __future__ import annotations

import datetime
import os
import time
from pathlib import Path
from typing import Any

import click
import orjson

from batch.cache import STORE_FILE, AnswerStore, CacheInfo, parse_age, parse_size
from batch.cache.location import resolve_cache_dir
from batch.cli import main
from batch.cli.common import cli_errors
from batch.errors import ConfigError

_cache_dir_option = click.option(
    "--cache-dir",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    help="The cache directory [env GIGABATCH_CACHE_DIR; default: the user cache directory, "
    "e.g. ~/.cache/gigabatch].",
)


@main.group()
def cache() -> None:
    """Inspect and prune the answer cache shared by all runs on this machine.

    \b
    Example:
      gigabatch cache info
      gigabatch cache prune --older-than 30d
    """


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _size(count: int) -> str:
    amount = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if amount < 1000:
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1000
    return f"{amount:.1f} TB"


def _info_json(info: CacheInfo) -> dict[str, Any]:
    return {
        "path": str(info.path),
        "entries": info.entries,
        "file_bytes": info.file_bytes,
        "live_bytes": info.live_bytes,
        "oldest": info.oldest,
        "newest": info.newest,
        "by_model": [
            {"model": s.model, "entries": s.entries, "bytes": s.payload_bytes, "tokens": s.tokens}
            for s in info.by_model
        ],
    }


def _render(info: CacheInfo) -> str:
    lines = [
        f"cache: {info.path}",
        f"  entries: {info.entries:,}, {_size(info.live_bytes)} in use, "
        f"{_size(info.file_bytes)} file",
        f"  oldest: {_when(info.oldest)}, newest: {_when(info.newest)}",
    ]
    lines.extend(
        f"  {s.model}: {s.entries:,} entries, {_size(s.payload_bytes)}, {s.tokens:,} tokens"
        for s in info.by_model
    )
    return "\n".join(lines)


@cache.command()
@_cache_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@cli_errors
def info(cache_dir: Path | None, as_json: bool) -> None:
    """Show the cache: entries, size on disk, entries by model, oldest and newest answer.

    \b
    Example:
      gigabatch cache info
      gigabatch cache info --cache-dir /data/gigabatch-cache --json
    """
    directory = resolve_cache_dir(cache_dir, os.environ)
    if not (directory / STORE_FILE).exists():
        report = CacheInfo(directory / STORE_FILE, 0, 0, None, None)
    else:
        with AnswerStore(directory) as store:
            report = store.info()
    if as_json:
        click.echo(orjson.dumps(_info_json(report), option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(_render(report))


@cache.command()
@_cache_dir_option
@click.option("--older-than", default=None, help="Drop answers received longer ago: 30d, 12h.")
@click.option("--max-size", default=None, help="Then drop the oldest until it fits: 50GB.")
@cli_errors
def prune(cache_dir: Path | None, older_than: str | None, max_size: str | None) -> None:
    """Drop old answers from the cache, by age or down to a size (oldest first).

    Runs sharing the cache may go on meanwhile. The file keeps its size: the pages freed
    are reused by new answers before it grows again.

    \b
    Example:
      gigabatch cache prune --older-than 30d
      gigabatch cache prune --max-size 50GB
    """
    if older_than is None and max_size is None:
        raise ConfigError("give --older-than AGE (e.g. 30d) or --max-size SIZE (e.g. 50GB)")
    created_before = time.time() - parse_age(older_than) if older_than else None
    max_bytes = parse_size(max_size) if max_size else None
    directory = resolve_cache_dir(cache_dir, os.environ)
    if not (directory / STORE_FILE).exists():
        click.echo(f"no cache at {directory}: nothing to prune")
        return
    with AnswerStore(directory) as store:
        report = store.prune(created_before=created_before, max_bytes=max_bytes)
    click.echo(
        f"removed {report.removed:,} entries: {_size(report.bytes_before)} -> "
        f"{_size(report.bytes_after)} in use"
    )
