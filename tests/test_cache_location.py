"""Where the cache lives, and the units of `cache prune`."""

from __future__ import annotations

from pathlib import Path

import pytest

from batch.cache import default_cache_dir, parse_age, parse_size, resolve_cache_dir
from batch.errors import ConfigError


def test_gigabatch_cache_dir_wins_over_xdg() -> None:
    env = {"GIGABATCH_CACHE_DIR": "/data/gb", "XDG_CACHE_HOME": "/xdg", "HOME": "/home/u"}
    assert default_cache_dir(env, platform="linux") == Path("/data/gb")


def test_xdg_cache_home_is_respected_on_linux() -> None:
    env = {"XDG_CACHE_HOME": "/xdg", "HOME": "/home/u"}
    assert default_cache_dir(env, platform="linux") == Path("/xdg/gigabatch")


def test_a_relative_xdg_cache_home_is_ignored() -> None:
    env = {"XDG_CACHE_HOME": "rel", "HOME": "/home/u"}
    assert default_cache_dir(env, platform="linux") == Path("/home/u/.cache/gigabatch")


def test_macos_and_windows_use_their_cache_directories() -> None:
    assert default_cache_dir({"HOME": "/Users/u"}, platform="darwin") == Path(
        "/Users/u/Library/Caches/gigabatch"
    )
    env = {"HOME": "C:/Users/u", "LOCALAPPDATA": "C:/Users/u/AppData/Local"}
    assert default_cache_dir(env, platform="win32") == Path(
        "C:/Users/u/AppData/Local/gigabatch/Cache"
    )


def test_the_cache_dir_option_wins_over_the_variable() -> None:
    env = {"GIGABATCH_CACHE_DIR": "/data/gb"}
    assert resolve_cache_dir("/opt/c", env) == Path("/opt/c")
    assert resolve_cache_dir(None, env) == Path("/data/gb")


@pytest.mark.parametrize(
    ("text", "seconds"), [("30d", 30 * 86_400), ("12h", 43_200), ("90s", 90), ("1.5w", 907_200)]
)
def test_ages_parse_to_seconds(text: str, seconds: float) -> None:
    assert parse_age(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"), [("50GB", 50 * 10**9), ("1 MiB", 2**20), ("512", 512), ("2kb", 2000)]
)
def test_sizes_parse_to_bytes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["30 days", "d", "", "-1d"])
def test_a_malformed_age_is_a_config_error_with_an_example(text: str) -> None:
    with pytest.raises(ConfigError, match="30d"):
        parse_age(text)


def test_a_size_with_an_unknown_unit_names_the_units() -> None:
    with pytest.raises(ConfigError, match="GiB"):
        parse_size("5 parsecs")
