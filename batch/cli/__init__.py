"""The `gigabatch` command line: a thin layer that turns options into calls and domain
errors into one-line messages and exit codes. Each command group lives in its own module."""

from __future__ import annotations

import importlib

import click

from batch import __version__

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


# Imported after `main` exists: each module adds its commands to it.
for _name in _COMMAND_MODULES:
    importlib.import_module(f"batch.cli.{_name}")
