"""A faithful local GigaChat server for tests, benchmarks and trying gigabatch for free.

    from batch.emulator import profile, serve_emulator
    with serve_emulator(profile("b2b", stream_limit=4, seed=1)) as emu:
        emu.base_url, emu.auth_url, emu.credentials, emu.stats()
"""

from batch.emulator.config import PROFILES, EmulatorConfig, profile
from batch.emulator.server import RunningEmulator, serve_emulator
from batch.emulator.tokens import count_tokens

__all__ = [
    "PROFILES",
    "EmulatorConfig",
    "RunningEmulator",
    "count_tokens",
    "profile",
    "serve_emulator",
]
