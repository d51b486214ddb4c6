"""`gigabatch run`'s options for a Ray cluster (`--ray`, `--ray-workers`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def ray_options(command: F) -> F:
    command = click.option(
        "--ray-workers",
        type=click.IntRange(min=1),
        default=None,
        help="With --ray: worker actors (default: one per CPU of the cluster).",
    )(command)
    return click.option(
        "--ray",
        "ray_address",
        metavar="local|auto|ADDRESS",
        default=None,
        help="Run on a Ray cluster: 'local' starts one here, 'auto' or host:port joins one "
        "(pip install 'gigabatch[ray]'). One coordinator shares the stream limit, the "
        "Retry-After pause and the token; the output is written here as usual.",
    )(command)


def pop_ray_options(options: dict[str, Any], mode: str) -> tuple[str | None, int | None]:
    """The cluster address and worker count; --ray with --mode batches is refused."""
    address = options.pop("ray_address")
    workers = options.pop("ray_workers")
    if address is not None and mode == "batches":
        raise click.UsageError("--ray runs the online API; drop it with --mode batches")
    if workers is not None and address is None:
        raise click.UsageError("--ray-workers needs --ray")
    return address, workers
