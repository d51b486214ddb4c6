"""Job kinds by the name the command line uses (`--kind chat|embed`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from batch.errors import ConfigError
from jobs.base import JobKind, KindOptions
from jobs.chat import ChatKind
from jobs.embeddings import EmbeddingsKind

KINDS: dict[str, Callable[[KindOptions], JobKind]] = {
    ChatKind.name: ChatKind,
    EmbeddingsKind.name: EmbeddingsKind,
}


def kind_for(name: Literal["chat", "embed"] | str, options: KindOptions) -> JobKind:
    """A fresh job kind for one run; ConfigError for an unknown name or bad options."""
    try:
        factory = KINDS[name]
    except KeyError:
        raise ConfigError(f"unknown job kind '{name}' (choose from: {', '.join(KINDS)})") from None
    return factory(options)
