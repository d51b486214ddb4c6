"""The run's side of the remembered stream limit: where a run starts its limiter, and what it
leaves for the next run on the same endpoint, scope and model family (in the cache
directory, `batch/cache/limits.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from batch.cache import model_family, recall_limit, remember_limit
from batch.errors import CacheUnavailable
from batch.limiter import AdaptiveLimiter


@dataclass(frozen=True, slots=True)
class LimitMemory:
    """The remembered limit of one endpoint, scope and model family."""

    cache_dir: Path
    base_url: str
    scope: str
    family: str

    @classmethod
    def of(cls, cache_dir: Path, base_url: str, scope: str, model: str) -> LimitMemory:
        return cls(cache_dir, base_url, scope, model_family(model))

    def recall(self) -> int | None:
        """The level the last run settled at, or None (also when the table is unreadable:
        a run then discovers the limit as it would without one)."""
        try:
            found = recall_limit(self.cache_dir, self.base_url, self.scope, self.family)
        except CacheUnavailable:
            return None
        return None if found is None else found.stream_limit

    def keep(self, limiter: AdaptiveLimiter, *, recalled: int | None) -> None:
        """Remember where `limiter` settled, when the run learned something about the
        server: a 429 showed its limit, or the run started from a remembered level."""
        if not limiter.found_limit and recalled is None:
            return
        level = max(1, round(limiter.settled()))
        if level == recalled:
            return
        remember_limit(self.cache_dir, self.base_url, self.scope, self.family, level)
