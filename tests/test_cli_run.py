"""`gigabatch run`, `validate` and `status` at the CLI edge (in-process, nothing sent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from batch.cli import main

SAMPLES = Path(__file__).resolve().parent.parent / "sample_jobs"


@pytest.mark.parametrize("command", ["run", "validate", "status"])
def test_every_command_has_help_with_an_example(command: str) -> None:
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output


def test_run_help_names_the_budget_and_answer_length_options_apart() -> None:
    output = CliRunner().invoke(main, ["run", "--help"]).output
    assert "--max-tokens" in output and "--max-completion-tokens" in output


def test_validate_reports_a_valid_sample_as_json_and_exits_0() -> None:
    result = CliRunner().invoke(main, ["validate", str(SAMPLES / "chat.jsonl"), "--json"])
    assert result.exit_code == 0
    report = json.loads(result.output)
    assert report["problem_count"] == 0 and report["jobs"] > 0


def test_validate_lists_every_problem_with_line_and_field_and_exits_2(tmp_path: Path) -> None:
    jobs = tmp_path / "texts.jsonl"
    jobs.write_text('{"id": "a"}\n{"id": "b", "text": 5}\n')
    result = CliRunner().invoke(main, ["validate", str(jobs), "--kind", "embed"])
    assert result.exit_code == 2
    assert "line 1, field 'text'" in result.output
    assert "line 2, field 'text'" in result.output


def test_status_of_a_directory_that_is_no_output_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["status", str(tmp_path)])
    assert result.exit_code == 2
    assert "not a gigabatch output directory" in result.output


def test_run_refuses_an_unknown_emulator_knob_with_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "run",
            str(SAMPLES / "chat.jsonl"),
            "--out",
            str(tmp_path / "out"),
            "--emulator",
            "--emulator-option",
            "no_such_knob=1",
        ],
    )
    assert result.exit_code == 2
    assert "no_such_knob" in result.output
