"""Job kinds by the name the command line uses (`--kind chat|embed`).

A kind registers itself (`@register` on its class); the built-in kinds' modules are imported
on the first look-up, so `--kind` choices, help and options all come from here and adding a
kind touches `jobs/` only.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from typing import Any, TypeVar

from batch.errors import ConfigError
from jobs.base import JobKind, KindOption, KindOptions

K = TypeVar("K", bound=type[JobKind])

BUILTIN_KINDS = ("jobs.chat", "jobs.embeddings")
DEFAULT_KIND = "chat"

_KINDS: dict[str, type[JobKind]] = {}
_NAMES: dict[str, str] = {}  # every accepted name (aliases too) -> the kind's name

# Options every kind reads (KindOptions' own fields).
COMMON_OPTIONS = (
    KindOption("--model", "model", "Model for jobs that name none [env GIGACHAT_MODEL]."),
    KindOption("--id-column", "id_column", "Column (or key) holding the job id."),
    KindOption(
        "--text-column",
        "text_column",
        "Column holding the job's text (embeddings: the text; chat: the prompt).",
    ),
)


def register(kind: K) -> K:
    """Class decorator: make `kind` available to `--kind` by its name and aliases."""
    for name in (kind.name, *kind.aliases):
        owner = _NAMES.get(name)
        if owner is not None and owner != kind.name:
            raise ValueError(f"job kind name '{name}' is taken by '{owner}'")
        _NAMES[name] = kind.name
    _KINDS[kind.name] = kind
    return kind


def _load_builtin() -> None:
    for module in BUILTIN_KINDS:
        importlib.import_module(module)


def kinds() -> dict[str, type[JobKind]]:
    """Every registered kind by its name, in registration order."""
    _load_builtin()
    return dict(_KINDS)


def kind_names() -> list[str]:
    """Every name `--kind` accepts, aliases included."""
    _load_builtin()
    return list(_NAMES)


def kind_class(name: str) -> type[JobKind]:
    """The kind `name` (or an alias) stands for; ConfigError when there is none."""
    _load_builtin()
    canonical = _NAMES.get(name)
    if canonical is None:
        raise ConfigError(f"unknown job kind '{name}' (choose from: {', '.join(_NAMES)})")
    return _KINDS[canonical]


def cli_options() -> list[KindOption]:
    """The options of every kind, each flag once (the first kind declaring it wins)."""
    seen: dict[str, KindOption] = {o.flag: o for o in COMMON_OPTIONS}
    for kind in kinds().values():
        for option in kind.cli_options:
            seen.setdefault(option.flag, option)
    return list(seen.values())


def kind_for(name: str, options: KindOptions | None = None) -> JobKind:
    """A fresh job kind for one run; ConfigError for an unknown name or bad options.
    Plain `KindOptions` (the settings every kind reads) are taken as the kind's own
    options with their defaults for the rest."""
    kind = kind_class(name)
    if options is None:
        options = kind.options_type()
    elif not isinstance(options, kind.options_type):
        common = {f.name: getattr(options, f.name) for f in dataclasses.fields(KindOptions)}
        options = kind.options_type(**common)
    return kind(options)


def kind_from_values(name: str, values: Mapping[str, Any]) -> JobKind:
    """A kind built from option values by field name (a command line's). A value given
    for an option the kind does not take is refused, naming the flag."""
    kind = kind_class(name)
    fields = {f.name for f in dataclasses.fields(kind.options_type)}
    foreign = [
        o.flag
        for o in cli_options()
        if o.field not in fields and values.get(o.field, o.default) != o.default
    ]
    if foreign:
        own = ", ".join(o.flag for o in cli_options() if o.field in fields)
        raise ConfigError(
            f"{', '.join(foreign)}: not an option of --kind {kind.name} (its options: {own})"
        )
    given = {k: v for k, v in values.items() if k in fields and v is not None}
    return kind_for(kind.name, kind.options_type(**given))
