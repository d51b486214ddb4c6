"""What the cache and the journal hold for one answer."""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable
from dataclasses import dataclass

import orjson


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """One answer as stored: the kind's payload bytes, the model version that answered, when
    it was received (Unix seconds) and the tokens it was billed."""

    payload: bytes
    model: str
    created: float
    tokens: int

    def __repr__(self) -> str:
        return (
            f"CachedAnswer(model={self.model!r}, created={self.created!r}, "
            f"tokens={self.tokens!r}, payload=<{len(self.payload)} bytes>)"
        )


def embedding_payload(vector: Iterable[float]) -> bytes:
    """An embedding's payload: its floats as little-endian float32, 4 bytes each (the bytes
    of the output's `fixed_size_list<float32>` cell)."""
    floats = array("f", vector)
    if sys.byteorder == "big":
        floats.byteswap()
    return floats.tobytes()


def embedding_from_payload(payload: bytes) -> list[float]:
    """The floats of an embedding payload."""
    floats = array("f")
    floats.frombytes(payload)
    if sys.byteorder == "big":
        floats.byteswap()
    return floats.tolist()


def chat_payload(fields: dict[str, object]) -> bytes:
    """A chat answer's payload: its output fields (content, finish_reason, function_call...)
    as JSON."""
    return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)


def chat_from_payload(payload: bytes) -> dict[str, object]:
    loaded: dict[str, object] = orjson.loads(payload)
    return loaded
