"""The API's surface: its options are the command line's (one declaration), an error out
of the engine's task groups comes alone, and `python -m gigabatch` is not shadowed by a
user's `batch.py`."""

from __future__ import annotations

import subprocess
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import click
import pytest

import batch
from batch.api import run_options
from batch.batches_settings import BatchesSettings
from batch.cli import main
from batch.client import GigaChatClient
from batch.command_options import ESTIMATE_OPTIONS
from batch.errors import CacheUnavailable, ConfigError, single_error
from batch.launch import RunPlan, execute_run
from batch.options import Option, resolve
from batch.run_config import RunConfig
from batch.settings import ClientSettings
from jobs.base import Batch, JobOutcome
from jobs.chat import ChatKind, ChatOptions

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup, ExceptionGroup

SAMPLES = Path(__file__).resolve().parent.parent / "sample_jobs"


def click_params(command: str) -> dict[str, click.Parameter]:
    cmd = main.get_command(click.Context(main), command)
    assert cmd is not None
    return {p.name: p for p in cmd.params if p.name is not None}


def assert_same_as_the_command_line(command: str, options: Sequence[Option]) -> None:
    params = click_params(command)
    for option in options:
        if option.surface == "api":
            assert option.field not in params
            continue
        param = params[option.field]
        assert option.flag.split("/")[0] in param.opts, option.flag
        expected = () if option.multiple and option.default is None else option.default
        assert param.default in (expected, None if expected == () else expected), option.name


def test_run_options_are_the_command_lines_with_its_defaults() -> None:
    assert_same_as_the_command_line("run", run_options())
    defaults = resolve({}, run_options(), call="batch.run")
    assert defaults["max_concurrency"] == 16
    assert defaults["mode"] == "online"
    assert defaults["max_tokens_budget"] is None  # --max-tokens, the budget
    assert "max_tokens" in defaults  # --max-completion-tokens, the chat answers' cap


def test_estimate_options_are_the_command_lines() -> None:
    assert_same_as_the_command_line("estimate", ESTIMATE_OPTIONS)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("max_concurrency", 0, "must be at least 1, got 0"),
        ("max_elapsed", 0, "must be greater than 0, got 0"),
        ("batch_lines", 501, "must be at most 500, got 501"),
        ("mode", "offline", "must be one of online, batches"),
        ("restart", "yes", "must be True or False"),
        ("max_attempts", 2.5, "must be an integer"),
        ("prices", "/no/such/prices.json", "no such file"),
        ("on_long_text", "drop", "must be one of fail, truncate"),
    ],
)
def test_a_value_the_command_line_refuses_is_refused_naming_the_option(
    name: str, value: Any, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        resolve({name: value}, run_options(), call="batch.run")
    assert str(caught.value).startswith(f"{name} (--{name.replace('_', '-')})")


def test_options_only_of_the_command_line_are_not_offered_to_the_api() -> None:
    with pytest.raises(ConfigError, match="unknown option 'json'"):
        resolve({"json": True}, ESTIMATE_OPTIONS, call="batch.estimate")


def test_single_error_picks_the_domain_error_out_of_nested_groups() -> None:
    cause = CacheUnavailable("cache.lmdb is locked")
    group = ExceptionGroup("outer", [ExceptionGroup("inner", [RuntimeError("x"), cause])])
    assert single_error(group) is cause
    lone = ValueError("bug")
    assert single_error(ExceptionGroup("g", [lone])) is lone
    several = ExceptionGroup("g", [ValueError("a"), TypeError("b")])
    assert single_error(several) is several


class LockedCacheKind(ChatKind):
    """Chat whose every send finds the answer cache locked (a worker's domain error)."""

    async def send(self, client: Any, batch: Batch) -> list[JobOutcome]:
        raise CacheUnavailable("answer cache /tmp/cache.lmdb is locked by another process")


def test_an_error_inside_the_engines_task_groups_is_raised_alone(tmp_path: Path) -> None:
    config = RunConfig(
        jobs_path=SAMPLES / "chat.jsonl",
        out_dir=tmp_path / "out",
        kind=LockedCacheKind(ChatOptions()),
        # A client of our own: no start-up check, so the producer's error comes first.
        client_factory=lambda: GigaChatClient(
            ClientSettings.from_env({}, access_token="t", base_url="http://127.0.0.1:9")
        ),
        progress="off",
    )
    with pytest.raises(CacheUnavailable, match="locked") as caught:
        anyio.run(execute_run, RunPlan(config, "online", BatchesSettings()))
    assert not isinstance(caught.value, BaseExceptionGroup)


def test_python_m_gigabatch_is_not_shadowed_by_a_users_batch_py(tmp_path: Path) -> None:
    (tmp_path / "batch.py").write_text("print('the user script ran')\n")
    (tmp_path / "jobs.py").write_text("print('the user jobs ran')\n")
    done = subprocess.run(
        [sys.executable, "-m", "gigabatch", "--version"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == f"gigabatch, version {batch.__version__}"
    assert "user" not in done.stdout + done.stderr


def test_importing_batch_imports_no_engine_until_a_name_is_used() -> None:
    probe = "import sys, batch; print('batch.runner' in sys.modules, callable(batch.estimate))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "True"]


def test_every_public_name_resolves_and_is_listed_once() -> None:
    assert len(set(batch.__all__)) == len(batch.__all__)
    for name in batch.__all__:
        assert getattr(batch, name) is not None
    assert callable(batch.run)
    assert callable(batch.estimate)
    assert issubclass(batch.RowsFailed, batch.GigabatchError)


def test_progress_is_a_bar_in_ipython_and_off_elsewhere_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from batch.api import _progress_mode

    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert _progress_mode("auto", quiet=False) == "off"  # pytest's stderr is no terminal
    shell = types.SimpleNamespace(get_ipython=lambda: object())
    monkeypatch.setitem(sys.modules, "IPython", shell)
    assert _progress_mode("auto", quiet=False) == "bar"
    assert _progress_mode("auto", quiet=True) == "off"
    assert _progress_mode("log", quiet=False) == "log"
