"""`gigabatch models` / `gigabatch balance` against the emulator over loopback, and the shared
CLI edge (options from GIGACHAT_* variables, errors as one line and an exit code)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import orjson
import pytest
from click.testing import CliRunner

from batch.cli import main
from batch.cli.common import api_options, cli_errors, settings_from_options
from batch.emulator import RunningEmulator, profile, serve_emulator
from batch.errors import (
    BudgetExhausted,
    ConfigError,
    JobFileError,
    PaymentRequired,
    RunRefused,
    ServerError,
)


@pytest.fixture(scope="module")
def emu() -> Iterator[RunningEmulator]:
    with serve_emulator(profile("fast", seed=1)) as running:
        yield running


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("GIGACHAT_"):
            monkeypatch.delenv(name)


def env_for(emu: RunningEmulator, **extra: str) -> dict[str, str]:
    return {**emu.client_env(), **extra}


def invoke(args: list[str], env: dict[str, str] | None = None) -> click.testing.Result:
    return CliRunner().invoke(main, args, env=env)


# --- models and balance --------------------------------------------------------------------


def test_models_prints_a_table_of_id_type_owner(emu: RunningEmulator) -> None:
    result = invoke(["models"], env_for(emu))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["id", "type", "owned_by"]
    rows = {line.split()[0]: line.split()[1] for line in lines[1:]}
    assert rows["GigaChat"] == "chat"
    assert rows["Embeddings"] == "embedder"


def test_models_json_is_a_list_of_objects(emu: RunningEmulator) -> None:
    result = invoke(["models", "--json"], env_for(emu))
    assert result.exit_code == 0, result.output
    models = orjson.loads(result.stdout)
    assert {"id": "EmbeddingsGigaR", "type": "embedder", "owned_by": "salutedevices"} in models


def test_balance_json_lists_each_usage(emu: RunningEmulator) -> None:
    result = invoke(["balance", "--json"], env_for(emu))
    assert result.exit_code == 0, result.output
    usages = {entry["usage"] for entry in orjson.loads(result.stdout)}
    assert {"GigaChat", "embeddings"} <= usages


def test_balance_table_shows_whole_token_counts(emu: RunningEmulator) -> None:
    result = invoke(["balance"], env_for(emu))
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["usage", "tokens"]
    assert all(row.split()[1].isdigit() for row in rows)


def test_user_and_password_options_work_without_credentials(emu: RunningEmulator) -> None:
    env = env_for(emu)
    del env["GIGACHAT_CREDENTIALS"]
    result = invoke(["models", "--user", emu.user, "--password", emu.password], env)
    assert result.exit_code == 0, result.output


def test_options_win_over_variables(emu: RunningEmulator) -> None:
    env = env_for(emu, GIGACHAT_BASE_URL="http://127.0.0.1:9/nowhere/api/v1")
    result = invoke(["models", "--base-url", emu.base_url], env)
    assert result.exit_code == 0, result.output


def test_rejected_credentials_exit_1_with_one_line_and_no_secret(emu: RunningEmulator) -> None:
    wrong = "d3Jvbmc6c2VjcmV0LXdyb25n"  # base64("wrong:secret-wrong")
    result = invoke(["models"], env_for(emu, GIGACHAT_CREDENTIALS=wrong))
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    assert len(result.stderr.splitlines()) == 1
    assert wrong not in result.output


def test_missing_credentials_exit_2_naming_the_variables() -> None:
    result = invoke(["balance"], {"GIGACHAT_BASE_URL": "http://127.0.0.1:9/api/v1"})
    assert result.exit_code == 2
    assert "GIGACHAT_CREDENTIALS" in result.stderr
    assert "GIGACHAT_USER" in result.stderr


def test_malformed_credentials_exit_2_without_echoing_them() -> None:
    result = invoke(["models", "--credentials", "not base64 at all!"])
    assert result.exit_code == 2
    assert "GIGACHAT_CREDENTIALS" in result.stderr
    assert "not base64 at all!" not in result.output


@pytest.mark.parametrize("command", ["models", "balance"])
def test_every_info_command_has_help_with_an_example(command: str) -> None:
    result = invoke([command, "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.stdout
    for option in ("--credentials", "--ca-bundle-file", "--no-verify-ssl", "--timeout"):
        assert option in result.stdout


@pytest.mark.e2e
def test_models_runs_as_a_real_process(emu: RunningEmulator) -> None:
    completed = subprocess.run(
        [str(Path(sys.executable).parent / "gigabatch"), "models", "--json"],
        env={**os.environ, **env_for(emu)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert any(m["id"] == "GigaChat" for m in orjson.loads(completed.stdout))


# --- the shared CLI edge -------------------------------------------------------------------


def _raising(error: BaseException) -> click.Command:
    @click.command()
    @cli_errors
    def command() -> None:
        raise error

    return command


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConfigError("bad setting"), 2),
        (JobFileError("2 problems"), 2),
        (RunRefused("input changed"), 2),
        (BudgetExhausted("spent 15.00 RUB of 15.00"), 4),
        (PaymentRequired("Payment Required", status=402), 1),
        (ServerError("boom", status=500, request_id="r-1"), 1),
        (KeyboardInterrupt(), 130),
    ],
)
def test_cli_errors_maps_errors_to_exit_codes(error: BaseException, code: int) -> None:
    result = CliRunner().invoke(_raising(error))
    assert result.exit_code == code
    assert result.stdout == ""
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_cli_errors_prints_one_error_line_with_the_request_id() -> None:
    result = CliRunner().invoke(_raising(ServerError("boom", status=500, request_id="r-1")))
    assert result.stderr == "error: HTTP 500 boom (request id r-1)\n"


def test_job_file_error_lists_its_problems_under_the_line() -> None:
    problems = [f"jobs.jsonl line {n}: field 'id': duplicate" for n in range(1, 4)]
    result = CliRunner().invoke(_raising(JobFileError("3 problems", problems)))
    assert result.stderr.splitlines() == ["error: 3 problems", *[f"  {p}" for p in problems]]


def test_settings_from_options_pops_the_api_options_and_keeps_the_rest() -> None:
    seen: dict[str, object] = {}

    @click.command()
    @api_options
    @click.option("--out")
    def command(**options: object) -> None:
        settings = settings_from_options(options)
        seen.update(options)
        seen["scope"] = settings.scope
        seen["timeout"] = settings.timeout
        seen["verify"] = settings.verify_ssl_certs

    result = CliRunner().invoke(
        command,
        ["--out", "dir", "--scope", "GIGACHAT_API_B2B", "--timeout", "12", "--no-verify-ssl"],
        env={"GIGACHAT_SCOPE": "GIGACHAT_API_CORP", "GIGACHAT_TIMEOUT": "99"},
    )
    assert result.exit_code == 0, result.output
    assert seen == {"out": "dir", "scope": "GIGACHAT_API_B2B", "timeout": 12.0, "verify": False}


def test_unset_options_leave_the_variables_in_force() -> None:
    seen: dict[str, object] = {}

    @click.command()
    @api_options
    def command(**options: object) -> None:
        settings = settings_from_options(options)
        seen["scope"] = settings.scope
        seen["verify"] = settings.verify_ssl_certs

    env = {"GIGACHAT_SCOPE": "GIGACHAT_API_CORP", "GIGACHAT_VERIFY_SSL_CERTS": "false"}
    result = CliRunner().invoke(command, [], env=env)
    assert result.exit_code == 0, result.output
    assert seen == {"scope": "GIGACHAT_API_CORP", "verify": False}
