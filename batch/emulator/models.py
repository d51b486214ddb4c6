"""The models the emulator serves: their type, limits, vector size and version suffix."""

from __future__ import annotations

from dataclasses import dataclass

from batch.emulator.config import EmulatorConfig

OWNER = "salutedevices"


@dataclass(frozen=True)
class ModelSpec:
    """One model of `GET /models`; `limit` is the context window (chat) or the per-text
    input limit (embedder), both in tokens."""

    id: str
    type: str
    limit: int
    dims: int = 0
    version: str = "2.0.28.2"

    def limit_for(self, config: EmulatorConfig) -> int:
        """This model's token limit after the config's overrides."""
        override = config.context_window if self.type == "chat" else config.embedding_input_limit
        return override if override is not None else self.limit

    @property
    def versioned(self) -> str:
        """The name the API answers with, e.g. "GigaChat:2.0.28.2"."""
        return f"{self.id}:{self.version}"


MODELS: dict[str, ModelSpec] = {
    spec.id: spec
    for spec in (
        ModelSpec("GigaChat", "chat", 32_768),
        ModelSpec("GigaChat-Pro", "chat", 32_768),
        ModelSpec("GigaChat-Max", "chat", 32_768),
        ModelSpec("GigaChat-2", "chat", 131_072),
        ModelSpec("GigaChat-2-Pro", "chat", 131_072),
        ModelSpec("GigaChat-2-Max", "chat", 131_072),
        ModelSpec("Embeddings", "embedder", 512, dims=1024),
        ModelSpec("Embeddings-2", "embedder", 512, dims=1024),
        ModelSpec("EmbeddingsGigaR", "embedder", 4096, dims=2560),
    )
}


def model_entry(spec: ModelSpec) -> dict[str, str]:
    """The JSON object `GET /models` lists for `spec`."""
    return {"id": spec.id, "object": "model", "owned_by": OWNER, "type": spec.type}
