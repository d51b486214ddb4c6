"""Where the cache lives: `--cache-dir`, else `GIGABATCH_CACHE_DIR`, else the platform's
user cache directory (`XDG_CACHE_HOME` respected on Linux and BSD)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

CACHE_DIR_VARIABLE = "GIGABATCH_CACHE_DIR"
_APP = "gigabatch"


def default_cache_dir(env: Mapping[str, str], *, platform: str = sys.platform) -> Path:
    """The cache directory when no `--cache-dir` is given."""
    if env.get(CACHE_DIR_VARIABLE):
        return Path(env[CACHE_DIR_VARIABLE]).expanduser()
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    if platform == "darwin":
        return home / "Library" / "Caches" / _APP
    if platform == "win32":
        local = env.get("LOCALAPPDATA")
        base = Path(local) if local else home / "AppData" / "Local"
        return base / _APP / "Cache"
    xdg = env.get("XDG_CACHE_HOME")
    # The XDG spec: a relative value is invalid and must be ignored.
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / _APP
    return home / ".cache" / _APP


def resolve_cache_dir(option: str | Path | None, env: Mapping[str, str]) -> Path:
    """`--cache-dir` when given, else the default."""
    return Path(option).expanduser() if option else default_cache_dir(env)
