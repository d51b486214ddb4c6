"""The options of `run --mode batches` (GigaChat's native batch API), as one bundle, and
the lines `gigabatch status` adds for the batches an output directory records."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from batch.batch_journal import recorded_batches
from batch.cli.common import click_options
from batch.command_options import BATCHES_OPTIONS

F = TypeVar("F", bound=Callable[..., Any])


def batches_options(f: F) -> F:
    """`--mode` and the batch API's options (declared in batch/command_options.py)."""
    return click_options(BATCHES_OPTIONS)(f)


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
