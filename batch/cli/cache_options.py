"""The answer-cache options `run` and `estimate` share: whether a run reuses answers, and
where the cache lives."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

F = TypeVar("F", bound=Callable[..., object])


def answer_cache_options(command: F) -> F:
    """--cache/--no-cache (default: the kind's: embeddings yes, chat no) and --cache-dir."""
    command = click.option(
        "--cache-dir",
        default=None,
        type=click.Path(file_okay=False, path_type=Path),
        help="The answer cache's directory [env GIGABATCH_CACHE_DIR; default: the user "
        "cache directory, e.g. ~/.cache/gigabatch].",
    )(command)
    return click.option(
        "--cache/--no-cache",
        "cache",
        default=None,
        help="Reuse answers from the answer cache and add new ones to it. Default: on for "
        "embeddings, off for chat (a sampled answer is reused only when you say so).",
    )(command)
