"""The options of `run --mode batches` (GigaChat's native batch API), as one bundle, and
the lines `gigabatch status` adds for the batches an output directory records."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from batch.batch_journal import recorded_batches
from batch.batches_settings import BatchesSettings

F = TypeVar("F", bound=Callable[..., Any])

_OPTIONS = (
    click.option(
        "--mode",
        type=click.Choice(["online", "batches"]),
        default="online",
        show_default=True,
        help="online: a request per batch of jobs; batches: GigaChat's batch API (files of "
        "tasks answered server-side, without holding streams).",
    ),
    click.option(
        "--batch-lines",
        type=click.IntRange(1, 500),
        default=500,
        show_default=True,
        help="Batches: task lines per uploaded file (the API allows 500).",
    ),
    click.option(
        "--batch-bytes",
        type=click.IntRange(min=1),
        default=20 * 1024 * 1024,
        show_default=True,
        help="Batches: most bytes per uploaded file (undocumented by GigaChat).",
    ),
    click.option(
        "--completion-window",
        type=click.FloatRange(min=0, min_open=True),
        default=24 * 3600.0,
        show_default=True,
        help="Batches: seconds after which a batch still not completed fails its jobs.",
    ),
    click.option(
        "--completion-timeout",
        type=click.FloatRange(min=0),
        default=24 * 3600.0,
        show_default=True,
        help="Batches: seconds this run waits; then it stops (exit 1) and a rerun resumes.",
    ),
    click.option(
        "--poll-interval",
        type=click.FloatRange(min=0, min_open=True),
        default=2.0,
        show_default=True,
        help="Batches: first wait between status polls; it grows x1.5 up to --poll-max.",
    ),
    click.option(
        "--poll-max",
        type=click.FloatRange(min=0, min_open=True),
        default=60.0,
        show_default=True,
        help="Batches: longest wait between status polls.",
    ),
)


def batches_options(f: F) -> F:
    for option in reversed(_OPTIONS):
        f = option(f)
    return f


def pop_batches_options(options: dict[str, Any]) -> tuple[str, BatchesSettings]:
    """Pop the bundle's values out of a command's keyword arguments: the mode, the settings."""
    mode = str(options.pop("mode"))
    settings = BatchesSettings(
        max_lines=options.pop("batch_lines"),
        max_bytes=options.pop("batch_bytes"),
        completion_window_s=options.pop("completion_window"),
        completion_timeout_s=options.pop("completion_timeout"),
        poll_initial_s=options.pop("poll_interval"),
        poll_max_s=options.pop("poll_max"),
    )
    return mode, settings


def batches_status(out_dir: Path) -> list[dict[str, Any]]:
    """The batches `out_dir` records, as `gigabatch status` shows them (no request sent)."""
    return [
        {
            "id": b.id,
            "state": b.state,
            "server_status": b.server_status,
            "jobs": b.jobs,
            "tasks": b.tasks,
            "completed": b.completed,
            "failed": b.failed,
            "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(b.recorded_at)),
        }
        for b in recorded_batches(out_dir)
    ]


def batches_lines(batches: list[dict[str, Any]]) -> str:
    lines = [f"  batches: {len(batches)} recorded"]
    for b in batches:
        lines.append(
            f"    {b['id'] or '(id not received)'}: {b['state']}"
            f" (server: {b['server_status'] or '-'}), {b['jobs']} jobs in {b['tasks']} tasks,"
            f" {b['completed']} completed, {b['failed']} failed, recorded {b['recorded_at']}"
        )
    return "\n".join(lines)
