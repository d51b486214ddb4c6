"""Running the emulator: `serve_emulator` starts uvicorn (httptools + uvloop) on loopback in
a background thread with its own event loop, or in a child process for benchmarks, and
stops it when the `with` block ends. `RunningEmulator` is what the block gets.

The emulator is a server and knows nothing of the client it tests: `client_env()` hands out
the `GIGACHAT_*` variables a client would read. The server packages (the `emulator` extra)
are imported only when a server starts, so importing the emulator never needs them.
"""

from __future__ import annotations

import logging
import os
import select
import subprocess as sp
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from batch.emulator.app import EmulatorApp
from batch.emulator.config import EmulatorConfig
from batch.emulator.oauth import credentials_for

if TYPE_CHECKING:
    import uvicorn

_START_TIMEOUT_S = 15.0
_UNCOMPLETED = "ASGI callable returned without completing response."
# uvloop has no Windows build (the extra leaves it out there); asyncio's loop stands in.
_LOOP = "asyncio" if sys.platform == "win32" else "uvloop"
_SERVER_PACKAGES = ("uvicorn", "httptools") + (() if _LOOP == "asyncio" else ("uvloop",))


class EmulatorUnavailable(RuntimeError):
    """The emulator's server packages are not installed."""


class _ResetFaultFilter(logging.Filter):
    """Drops uvicorn's error line for the connections the reset fault cuts on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != _UNCOMPLETED


_RESET_FAULT_FILTER = _ResetFaultFilter()


def require_server_packages() -> None:
    """Raise EmulatorUnavailable, saying how to install them, when a server package is
    missing (checked before a server starts, in this process or a child)."""
    missing = [name for name in _SERVER_PACKAGES if find_spec(name) is None]
    if missing:
        raise EmulatorUnavailable(
            f"the emulator needs {', '.join(missing)}: pip install 'gigabatch[emulator]'"
        )


class RunningEmulator:
    """A started emulator: its URLs, the key it accepts, and its stats and knobs (reached
    over HTTP, so the thread and subprocess modes behave the same)."""

    def __init__(self, origin: str, config: EmulatorConfig) -> None:
        self.origin = origin
        self.config = config

    @property
    def base_url(self) -> str:
        return f"{self.origin}/api/v1"

    @property
    def auth_url(self) -> str:
        return f"{self.origin}/api/v2/oauth"

    @property
    def credentials(self) -> str:
        return credentials_for(self.config)

    @property
    def user(self) -> str:
        return self.config.user

    @property
    def password(self) -> str:
        return self.config.password

    @property
    def scope(self) -> str:
        return self.config.scope

    def client_env(self) -> dict[str, str]:
        """The `GIGACHAT_*` variables that point a client (gigabatch's settings loader, the
        official SDK) at this emulator with the key it accepts."""
        return {
            "GIGACHAT_BASE_URL": self.base_url,
            "GIGACHAT_AUTH_URL": self.auth_url,
            "GIGACHAT_CREDENTIALS": self.credentials,
            "GIGACHAT_SCOPE": self.scope,
        }

    def _control(self, method: str, path: str, body: Any = None, **params: str) -> Any:
        with httpx.Client(trust_env=False, timeout=30.0) as client:
            response = client.request(
                method,
                f"{self.origin}/_emulator/{path}",
                content=None if body is None else orjson.dumps(body),
                params=params,
            )
        if response.status_code != 200:
            raise ValueError(response.json().get("message", response.text))
        return orjson.loads(response.content)

    def access_token(self) -> str:
        """A fresh access token from the emulator's OAuth endpoint (for raw HTTP clients)."""
        with httpx.Client(trust_env=False, timeout=30.0) as client:
            response = client.post(
                self.auth_url,
                headers={"Authorization": f"Basic {self.credentials}", "RqUID": str(uuid.uuid4())},
                data={"scope": self.scope},
            )
        response.raise_for_status()
        token: str = response.json()["access_token"]
        return token

    def stats(self, *, arrivals: bool = True) -> dict[str, Any]:
        """The stats document (see batch.emulator.stats); arrivals=False leaves the
        per-request list out."""
        result: dict[str, Any] = self._control("GET", "stats", arrivals="1" if arrivals else "0")
        return result

    def reset_stats(self) -> None:
        self._control("POST", "reset")

    def reconfigure(self, **knobs: Any) -> None:
        """Change runtime knobs now (e.g. stream_limit=2, fault_5xx=0.1, start_storm_s=2)."""
        described = self._control("POST", "config", knobs)
        self.config = EmulatorConfig(**described["config"])

    def ceiling_rps(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Throughput ceiling for requests of this size: stream limit / mean latency."""
        return self.config.ceiling_rps(prompt_tokens, completion_tokens)


def _uvicorn_server(app: EmulatorApp, config: EmulatorConfig) -> uvicorn.Server:
    import uvicorn

    logging.getLogger("uvicorn.error").addFilter(_RESET_FAULT_FILTER)  # no-op when there
    return uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            loop=_LOOP,
            http="httptools",
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=1,
            # Benchmarks open many keep-alive connections; don't drop idle ones early.
            timeout_keep_alive=30,
        )
    )


@contextmanager
def _in_thread(config: EmulatorConfig) -> Iterator[RunningEmulator]:
    server = _uvicorn_server(EmulatorApp(config), config)
    thread = threading.Thread(target=server.run, name="gigabatch-emulator", daemon=True)
    thread.start()
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the emulator could not start on {config.host}:{config.port}")
        time.sleep(0.005)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield RunningEmulator(f"http://{config.host}:{port}", config)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def _in_subprocess(config: EmulatorConfig) -> Iterator[RunningEmulator]:
    child = sp.Popen(
        [sys.executable, "-m", "batch.emulator", orjson.dumps(config.to_dict()).decode()],
        stdin=sp.PIPE,
        stdout=sp.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert child.stdout is not None and child.stdin is not None
    try:
        ready, _, _ = select.select([child.stdout], [], [], _START_TIMEOUT_S)
        line = child.stdout.readline() if ready else b""
        if not line:
            raise RuntimeError("the emulator subprocess did not start")
        yield RunningEmulator(orjson.loads(line)["origin"], config)
    finally:
        child.stdin.close()  # the child exits when its stdin closes
        try:
            child.wait(timeout=5)
        except sp.TimeoutExpired:
            child.kill()
            child.wait()
        child.stdout.close()


@contextmanager
def serve_emulator(
    config: EmulatorConfig | None = None, *, subprocess: bool = False
) -> Iterator[RunningEmulator]:
    """Run an emulator for the duration of the `with` block (thread, or child process with
    subprocess=True); it binds config.host:config.port (loopback, free port by default)."""
    require_server_packages()
    config = config or EmulatorConfig()
    runner = _in_subprocess if subprocess else _in_thread
    with runner(config) as emulator:
        yield emulator
