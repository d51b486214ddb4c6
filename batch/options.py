"""The options of `run` and `estimate`, declared once, without Click.

The command line turns each `Option` into a Click option (batch/cli/common.py) and the
Python API (`batch.run(..., max_cost=5)`) checks keyword arguments against the same
declaration (`resolve`), so both take the same names, defaults and bounds. An option's
Python name is its flag without dashes (`--max-cost` -> `max_cost`); `dest` is the name
the engine reads it by when that differs (`--max-tokens` is the budget, `max_tokens_budget`,
because a chat job's `max_tokens` is `--max-completion-tokens`).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from batch.errors import ConfigError
from jobs.base import KindOption

Surface = Literal["both", "cli", "api"]
PathRule = Literal["dir", "existing_dir", "file", "existing_file"]


@dataclass(frozen=True, slots=True)
class Option:
    """One option: `--flag` (`--a/--no-a` for a negatable switch) sets `dest`. `switch`
    makes it a boolean flag, `multiple` a repeatable one; `minimum`/`maximum` bound a number
    (`min_open`: strictly above the minimum); `path` says what a path must be. `surface`
    keeps an option to the command line (`--json`) or to the Python API (`progress`)."""

    flag: str
    help: str
    dest: str = ""
    type: type[Any] = str
    default: Any = None
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    min_open: bool = False
    max_open: bool = False
    switch: bool = False
    multiple: bool = False
    path: PathRule | None = None
    short: str | None = None
    metavar: str | None = None
    show_default: bool = True
    surface: Surface = "both"

    @property
    def name(self) -> str:
        """The Python keyword: the (first) flag without its dashes."""
        return self.flag.split("/", 1)[0].lstrip("-").replace("-", "_")

    @property
    def field(self) -> str:
        return self.dest or self.name

    @classmethod
    def of_kind(cls, option: KindOption) -> Option:
        """A job kind's option (declared in jobs/ without Click) as an Option."""
        return cls(
            option.flag,
            option.help,
            dest=option.field,
            type=option.type,
            default=option.default,
            choices=option.choices,
            minimum=option.minimum,
            show_default=option.default is not None,
        )

    def check(self, value: Any) -> Any:
        """`value` as the engine takes it; ConfigError naming the option when it is not one
        the command line would accept. None stands for the default."""
        if value is None:
            return () if self.multiple else self.default
        if self.switch:
            if not isinstance(value, bool):
                raise self._bad(f"must be True or False, got {value!r}")
            return value
        if self.multiple:
            if isinstance(value, str | bytes) or not isinstance(value, Iterable):
                raise self._bad(f"must be a list, got {value!r}")
            return tuple(self._check_one(v) for v in value)
        return self._check_one(value)

    def _check_one(self, value: Any) -> Any:
        if self.path is not None:
            return self._check_path(value)
        if self.choices:
            if value not in self.choices:
                raise self._bad(f"must be one of {', '.join(self.choices)}, got {value!r}")
            return value
        if self.type is int or self.type is float:
            return self._check_number(value)
        if not isinstance(value, self.type):
            raise self._bad(f"must be a {self.type.__name__}, got {value!r}")
        return value

    def _check_number(self, value: Any) -> float | int:
        accepted = (int,) if self.type is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, accepted):
            raise self._bad(
                f"must be a{'n integer' if self.type is int else ' number'}, got {value!r}"
            )
        number: float | int = int(value) if self.type is int else float(value)
        low, high = self.minimum, self.maximum
        if low is not None and (number <= low if self.min_open else number < low):
            raise self._bad(
                f"must be {'greater than' if self.min_open else 'at least'} {low:g}, got {value!r}"
            )
        if high is not None and (number >= high if self.max_open else number > high):
            raise self._bad(
                f"must be {'less than' if self.max_open else 'at most'} {high:g}, got {value!r}"
            )
        return number

    def _check_path(self, value: Any) -> Path | str:
        if not isinstance(value, str | os.PathLike):
            raise self._bad(f"must be a path, got {value!r}")
        path = Path(value)
        if self.path == "existing_file" and not path.is_file():
            raise self._bad(f"no such file: {path}")
        if self.path == "existing_dir" and not path.is_dir():
            raise self._bad(f"no such directory: {path}")
        if self.path == "dir" and path.exists() and not path.is_dir():
            raise self._bad(f"{path} is a file, not a directory")
        if self.path == "file" and path.is_dir():
            raise self._bad(f"{path} is a directory, not a file")
        return path if self.type is Path else str(path)

    def _bad(self, what: str) -> ConfigError:
        return ConfigError(f"{self.name} ({self.flag.split('/', 1)[0]}): {what}")


def resolve(given: Mapping[str, Any], options: Sequence[Option], *, call: str) -> dict[str, Any]:
    """Keyword arguments of the Python API, checked against `options`: every option's value
    (its default when not given) by `dest`. ConfigError for an unknown keyword (with the
    closest name) or a value the command line would refuse."""
    offered = [o for o in options if o.surface != "cli"]
    by_name = {o.name: o for o in offered}
    for key in given:
        if key not in by_name:
            close = difflib.get_close_matches(key, list(by_name), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(
                f"{call}() got an unknown option {key!r}{hint} (its options: {', '.join(by_name)})"
            )
    return {o.field: o.check(given.get(o.name)) for o in offered}


def without(options: Sequence[Option], *names: str) -> tuple[Option, ...]:
    """`options` less those named (an API call that sets them itself)."""
    return tuple(o for o in options if o.name not in names)
