"""A bounded least-recently-used map keyed by digests of (model, text): the run's cache of
answered vectors and the estimate's caches of counted texts and prompt-cache sessions."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")


def text_key(model: str, text: str) -> bytes:
    """The key of a text as a model sees it (16 bytes, whatever the text's length)."""
    return hashlib.blake2b(f"{model}\0{text}".encode(), digest_size=16).digest()


def _one(_: object) -> int:
    return 1


class Lru(Generic[V]):
    """At most `capacity` worth of values, each weighing `size(value)` (1 by default, so
    `capacity` counts entries); the least recently used go first."""

    def __init__(self, capacity: int, *, size: Callable[[V], int] = _one) -> None:
        self.capacity = capacity
        self.used = 0
        self._size = size
        self._items: OrderedDict[bytes, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: bytes) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: bytes, value: V) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.used -= self._size(old)
        self._items[key] = value
        self.used += self._size(value)
        while self.used > self.capacity and self._items:
            _, evicted = self._items.popitem(last=False)
            self.used -= self._size(evicted)
