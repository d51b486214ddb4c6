"""Cache keys: a versioned hash of everything that determines an answer.

A kind hands over its key material as bytes; the helpers here build that material
canonically from a request body (sorted-key JSON of the answer-affecting fields only), so
two requests that must get the same answer get the same key, whatever the order of their
fields or the batch they travelled in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

# Bump when the material of any kind changes meaning: old entries then simply stop matching.
KEY_VERSION = 1
KEY_BYTES = 1 + 32

# Chat request fields that change the answer. Transport fields (`stream`,
# `update_interval`) and the session id do not, so they stay out of the key.
CHAT_ANSWER_FIELDS = (
    "model",
    "messages",
    "functions",
    "function_call",
    "temperature",
    "top_p",
    "n",
    "max_tokens",
    "repetition_penalty",
    "profanity_check",
    "flags",
    "response_format",
)


def cache_key(kind_name: str, material: bytes) -> bytes:
    """The key of an answer: one version byte, then a 32-byte BLAKE2b of the kind's name and
    its material. The kind's name is hashed in so two kinds never share a key."""
    digest = hashlib.blake2b(digest_size=32, person=b"gigabatch-cache")
    digest.update(kind_name.encode())
    digest.update(b"\x00")
    digest.update(material)
    return bytes([KEY_VERSION]) + digest.digest()


def canonical_json(value: Any) -> bytes:
    """JSON with sorted keys and no whitespace: equal values give equal bytes. Integral floats
    are written as integers, so `"temperature": 1` and `1.0` are the same setting."""
    return orjson.dumps(_normalise(value), option=orjson.OPT_SORT_KEYS)


def request_material(body: Mapping[str, Any], fields: Iterable[str]) -> bytes:
    """Key material from the given fields of a request body; absent and null fields are left
    out, so a default the API applies and an explicit null key the same."""
    chosen = {name: body[name] for name in fields if body.get(name) is not None}
    return canonical_json(chosen)


def chat_material(body: Mapping[str, Any]) -> bytes:
    """Key material of one chat request body: the model, every message, the functions and
    every answer-affecting parameter."""
    return request_material(body, CHAT_ANSWER_FIELDS)


def embedding_material(model: str, text: str) -> bytes:
    """Key material of one embedded text: the model and the exact text (no normalisation:
    a changed space is a changed text). The bytes of `canonical_json([model, text])`: two
    strings need no normalising, and this runs once per job of every cached run."""
    return orjson.dumps([model, text])


def _normalise(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): _normalise(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_normalise(v) for v in value]
    return value
