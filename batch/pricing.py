"""The price table: rubles per million tokens, by model, kept as data (`prices.json`).

Prompt and completion tokens cost the same. `precached_prompt_tokens` are free: the API
reports them beside `prompt_tokens` (total = prompt + completion), so they are not billed.
A model the table does not name is priced at the table's default for its kind (the most
expensive model), so an estimate errs towards more than will be spent.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

from batch.api_types import Usage
from batch.errors import ConfigError

_MILLION = 1_000_000


@dataclass(frozen=True)
class PriceTable:
    chat: dict[str, float]
    embeddings: dict[str, float]
    default_chat: float
    default_embeddings: float
    taken: str
    source: str
    currency: str = "RUB"
    # Prices of GigaChat's batch API by model, where the table gives them (none published).
    batch: dict[str, float] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None = None) -> PriceTable:
        """The table shipped with gigabatch, or the one at `path`."""
        where = str(path) if path else "the built-in price table"
        try:
            raw = (
                path.read_bytes()
                if path
                else resources.files("batch").joinpath("prices.json").read_bytes()
            )
            data: Any = orjson.loads(raw)
        except OSError as exc:
            raise ConfigError(f"cannot read {where}: {exc.strerror}") from None
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"{where} is not valid JSON: {exc}") from None
        try:
            chat = {str(k): float(v) for k, v in data.get("chat", {}).items()}
            embeddings = {str(k): float(v) for k, v in data.get("embeddings", {}).items()}
            batch = {str(k): float(v) for k, v in data.get("batch", {}).items()}
            return cls(
                chat=chat,
                embeddings=embeddings,
                default_chat=float(data.get("default_chat", max(chat.values(), default=0.0))),
                default_embeddings=float(
                    data.get("default_embeddings", max(embeddings.values(), default=0.0))
                ),
                taken=str(data.get("taken", "unknown date")),
                source=str(data.get("source", where)),
                currency=str(data.get("currency", "RUB")),
                batch=batch,
            )
        except (AttributeError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"{where}: expected {{'chat': {{model: price}}, 'embeddings': {{...}}}}: {exc}"
            ) from None

    def for_batches(self) -> PriceTable:
        """The table the batch API bills by: the `batch` price of a model where the table
        gives one, its online price otherwise."""
        if not self.batch:
            return self
        embeddings = {m: p for m, p in self.batch.items() if _is_embeddings(m, self.embeddings)}
        chat = {m: p for m, p in self.batch.items() if m not in embeddings}
        return replace(
            self,
            chat={**self.chat, **chat},
            embeddings={**self.embeddings, **embeddings},
            source=f"{self.source} (batch prices)",
            batch={},
        )

    def price_per_million(self, model: str) -> float:
        """Price for a model name as requested or as answered (`GigaChat:2.0.28.2`)."""
        name = model.split(":", 1)[0]
        if name in self.chat:
            return self.chat[name]
        if name in self.embeddings:
            return self.embeddings[name]
        if name.lower().startswith("embeddings"):
            return self.default_embeddings
        return self.default_chat

    def cost(self, model: str, usage: Usage) -> float:
        """Rubles billed for `usage`; precached prompt tokens are free."""
        billed = usage.prompt_tokens + usage.completion_tokens
        return billed * self.price_per_million(model) / _MILLION


def _is_embeddings(model: str, embeddings: dict[str, float]) -> bool:
    return model in embeddings or model.lower().startswith("embeddings")
