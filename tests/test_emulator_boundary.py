"""The emulator is a server apart from the client: neither imports the other, importing it
has no side effects, and without its server packages the CLI says how to install them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner

from batch.cli import main
from batch.client import GigaChatClient
from batch.emulator import profile, serve_emulator
from batch.settings import ClientSettings

SAMPLES = Path(__file__).resolve().parent.parent / "sample_jobs"
CLIENT_SIDE = ("batch.settings", "batch.client", "batch.auth", "batch.wire", "batch.errors")


def imported_after(statement: str) -> dict[str, object]:
    """What a fresh interpreter holds after `statement`: modules and uvicorn's log filters."""
    probe = (
        f"import sys, json, logging; {statement}; "
        "print(json.dumps({'modules': sorted(sys.modules), "
        "'filters': len(logging.getLogger('uvicorn.error').filters)}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout
    result: dict[str, object] = json.loads(out)
    return result


def test_importing_the_emulator_imports_nothing_of_the_client_and_no_server() -> None:
    seen = imported_after("import batch.emulator")
    modules = seen["modules"]
    assert isinstance(modules, list)
    assert not [name for name in CLIENT_SIDE if name in modules]
    assert "uvicorn" not in modules
    assert seen["filters"] == 0  # no logging set-up at import


def test_importing_the_client_imports_neither_the_emulator_nor_uvicorn() -> None:
    modules = imported_after("import batch.client")["modules"]
    assert isinstance(modules, list)
    assert "uvicorn" not in modules
    assert not [name for name in modules if name.startswith("batch.emulator")]


def test_client_env_is_what_the_clients_settings_loader_reads() -> None:
    with serve_emulator(profile("fast", seed=1)) as emu:
        env = emu.client_env()
        assert all(name.startswith("GIGACHAT_") for name in env)
        settings = ClientSettings.from_env(env, timeout=30)

        async def models() -> list[str]:
            async with GigaChatClient(settings) as client:
                return [model.id for model in await client.models()]

        assert settings.base_url == emu.base_url and settings.timeout == 30.0
        assert "GigaChat" in anyio.run(models)


@pytest.fixture
def no_server_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if uvicorn were not installed (`find_spec` sees None in sys.modules)."""
    monkeypatch.setitem(sys.modules, "uvicorn", None)


def test_run_with_emulator_but_no_server_packages_says_how_to_install_them(
    no_server_packages: None, tmp_path: Path
) -> None:
    args = ["run", str(SAMPLES / "chat.jsonl"), "--out", str(tmp_path / "out"), "--emulator"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "uvicorn" in lines[0] and "pip install 'gigabatch[emulator]'" in lines[0]
    assert not (tmp_path / "out" / "results").exists()


def test_the_emulator_command_without_server_packages_says_how_to_install_them(
    no_server_packages: None,
) -> None:
    result = CliRunner().invoke(main, ["emulator"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "Error: the emulator needs uvicorn: pip install 'gigabatch[emulator]'"
    ]
