"""The `gigabatch` command line: a thin layer that turns options into calls and domain
errors into one-line messages and exit codes. Each command group lives in its own module."""

from __future__ import annotations

import importlib
import logging
import sys

import click

from batch import __version__
from batch.progress import log_time

# Exit codes, shared by every command.
EXIT_OK = 0
EXIT_FATAL = 1
EXIT_USAGE = 2
EXIT_FAILED_ROWS = 3
EXIT_BUDGET = 4
EXIT_LOCKED = 5  # another run holds the output directory; nothing was sent or changed
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

# Modules that register commands on `main`; each owns its commands.
_COMMAND_MODULES = ("info", "emulator", "run", "estimate", "report", "cache")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="gigabatch")
def main() -> None:
    """Run batches of GigaChat jobs: fast, resumable, never paying twice.

    \b
    Example:
      gigabatch run sample_jobs/chat.jsonl --out out/chat --emulator
    """
    _log_to_stderr()


class _DatedFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return log_time(record.created)


def _log_to_stderr() -> None:
    """The engine's warnings (`batch.*` loggers) on stderr, dated like the progress lines;
    the handler of an earlier call in this process (tests) is replaced, not doubled."""
    engine = logging.getLogger("batch")
    for old in [h for h in engine.handlers if getattr(h, "gigabatch_cli", False)]:
        engine.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_DatedFormatter("%(asctime)s %(levelname)s: %(message)s"))
    handler.setLevel(logging.WARNING)
    handler.gigabatch_cli = True  # type: ignore[attr-defined]
    engine.addHandler(handler)


# Imported after `main` exists: each module adds its commands to it.
for _name in _COMMAND_MODULES:
    importlib.import_module(f"batch.cli.{_name}")
