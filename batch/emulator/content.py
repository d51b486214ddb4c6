"""Deterministic content: embedding vectors and chat answers as documented functions of
the request, so runs are reproducible across processes and cost estimates can be checked
against the truth.

- Embedding: each byte of shake_256(model + NUL + text) picks one of 256 angles θ for a
  pair of components, (cos θ, sin θ)·sqrt(2/dims): unit length by construction, the same
  text always gives the same vector, different texts nearly orthogonal ones.
- Chat answer length: N tokens, from a `[[answer_tokens=N]]` directive in the last user
  message, else answer_tokens_min + blake2b(prompt) mod (max - min + 1); cut to max_tokens
  (finish_reason "length").
- Chat answer text: words of the last user message cut to four characters (one token
  each), cycled until N tokens; "echo" when the prompt has no words.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import orjson

from batch.emulator.tokens import count_tokens

_WORDS = re.compile(r"\w+")
_DIRECTIVE = re.compile(r"\[\[answer_tokens=(\d+)\]\]")
BLACKLIST_ANSWER = "Не люблю менять тему разговора, но вот сейчас тот самый случай."


@lru_cache(maxsize=8)
def _pair_table(dims: int) -> tuple[tuple[tuple[float, float], ...], tuple[bytes, ...]]:
    """The 256 component pairs (cos θ, sin θ)·sqrt(2/dims) and their JSON text."""
    scale = math.sqrt(2 / dims)
    pairs = tuple(
        (math.cos(2 * math.pi * k / 256) * scale, math.sin(2 * math.pi * k / 256) * scale)
        for k in range(256)
    )
    return pairs, tuple(orjson.dumps(pair)[1:-1] for pair in pairs)


def _digest(text: str, model: str, dims: int) -> bytes:
    return hashlib.shake_256(f"{model}\0{text}".encode()).digest(dims // 2)


def embedding(text: str, model: str, dims: int) -> list[float]:
    """A unit vector of `dims` floats determined by (model, text) alone."""
    pairs = _pair_table(dims)[0]
    vector: list[float] = []
    for byte in _digest(text, model, dims):
        vector.extend(pairs[byte])
    return vector


def embedding_json(text: str, model: str, dims: int) -> bytes:
    """`embedding(text, model, dims)` as a JSON array, built from precomputed text: the
    hot path of /embeddings, several times faster than serialising the floats."""
    fragments = _pair_table(dims)[1]
    return b"[" + b",".join(map(fragments.__getitem__, _digest(text, model, dims))) + b"]"


def answer_length(last_user: str, prompt_key: bytes, low: int, high: int) -> int:
    """Tokens the answer would have without a max_tokens cut."""
    directive = _DIRECTIVE.search(last_user)
    if directive:
        return max(1, int(directive.group(1)))
    spread = high - low + 1
    seed = int.from_bytes(hashlib.blake2b(prompt_key, digest_size=8).digest(), "little")
    return low + seed % spread


def answer_text(last_user: str, tokens: int) -> str:
    """`tokens` one-token words echoing the prompt; count_tokens(result) == tokens."""
    words = [w[:4] for w in _WORDS.findall(_DIRECTIVE.sub("", last_user))] or ["echo"]
    repeats = tokens // len(words) + 1
    return " ".join((words * repeats)[:tokens])


def is_blacklisted(texts: Sequence[str], triggers: Sequence[str]) -> bool:
    """True when any trigger word occurs in any text (case-insensitive)."""
    if not triggers:
        return False
    lowered = [t.lower() for t in texts]
    return any(word.lower() in text for word in triggers for text in lowered)


def _argument_value(name: str, schema: Mapping[str, Any], last_user: str) -> Any:
    kind = schema.get("type", "string")
    if schema.get("enum"):
        return schema["enum"][0]
    if kind in ("integer", "number"):
        return count_tokens(last_user)
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    if kind == "object":
        return {}
    words = _WORDS.findall(last_user)
    return " ".join(words[:4]) or name


def function_call(
    functions: Sequence[Mapping[str, Any]], forced: str | None, last_user: str
) -> dict[str, Any]:
    """The call the emulated model makes: the forced function, else the first one; every
    declared parameter gets a value derived from the last user message."""
    chosen = next((f for f in functions if f.get("name") == forced), functions[0])
    params = chosen.get("parameters") or {}
    properties = params.get("properties") or {} if isinstance(params, Mapping) else {}
    arguments = {
        key: _argument_value(key, spec if isinstance(spec, Mapping) else {}, last_user)
        for key, spec in properties.items()
    }
    return {"name": str(chosen.get("name", "")), "arguments": arguments}
