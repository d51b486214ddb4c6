"""Every command the CLI registers has help with an example: a new command without one fails."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from batch.cli import main


def test_the_cli_registers_every_command() -> None:
    assert set(main.commands) >= {
        "run",
        "validate",
        "status",
        "estimate",
        "emulator",
        "models",
        "balance",
        "report",
    }


@pytest.mark.parametrize("command", sorted(main.commands))
def test_every_registered_command_has_help_with_an_example(command: str) -> None:
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output


def test_top_level_help_lists_the_commands() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert all(name in result.output for name in main.commands)
