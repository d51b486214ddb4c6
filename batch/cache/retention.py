"""The units of `gigabatch cache prune`: ages like `30d` and sizes like `50GB`."""

from __future__ import annotations

import re

from batch.errors import ConfigError

_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_AMOUNT = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


def parse_age(text: str) -> float:
    """Seconds in an age: a number and one of s, m, h, d, w (`30d`, `12h`, `1.5w`)."""
    number, unit = _split(text, "age")
    if unit.lower() not in _AGE_UNITS:
        raise ConfigError(f"age {text!r}: the unit must be one of s, m, h, d, w (e.g. 30d)")
    return number * _AGE_UNITS[unit.lower()]


def parse_size(text: str) -> int:
    """Bytes in a size: a number and B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB,
    TiB (powers of 1024), e.g. `50GB`."""
    number, unit = _split(text, "size")
    if unit.lower() not in _SIZE_UNITS:
        raise ConfigError(
            f"size {text!r}: the unit must be one of B, KB, MB, GB, TB, KiB, MiB, GiB, TiB "
            "(e.g. 50GB)"
        )
    return int(number * _SIZE_UNITS[unit.lower()])


def _split(text: str, what: str) -> tuple[float, str]:
    match = _AMOUNT.fullmatch(text)
    if match is None:
        raise ConfigError(f"{what} {text!r}: expected a number and a unit, e.g. 30d or 50GB")
    return float(match.group(1)), match.group(2)
