"""A faithful local GigaChat server for tests, benchmarks and trying gigabatch for free.

    from batch.emulator import profile, serve_emulator
    with serve_emulator(profile("b2b", stream_limit=4, seed=1)) as emu:
        emu.base_url, emu.auth_url, emu.credentials, emu.client_env(), emu.stats()

It is a server that depends on nothing of the client side (settings, client, auth, wire):
a client reads `emu.client_env()` as it would read `os.environ`. The server packages are
the `emulator` extra, imported only when a server starts.
"""

from batch.emulator.config import PROFILES, EmulatorConfig, profile
from batch.emulator.server import (
    EmulatorUnavailable,
    RunningEmulator,
    require_server_packages,
    serve_emulator,
)
from batch.emulator.tokens import count_tokens

__all__ = [
    "PROFILES",
    "EmulatorConfig",
    "EmulatorUnavailable",
    "RunningEmulator",
    "count_tokens",
    "profile",
    "require_server_packages",
    "serve_emulator",
]
