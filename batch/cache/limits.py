"""The remembered stream limit: the concurrency a run settled at, kept per endpoint, scope
and model family in the cache directory, so the next run starts there instead of paying
for discovery again. The limiter still probes as usual, so a lowered limit shows at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from batch.cache.database import Database

LIMITS_FILE = "limits.sqlite3"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE stream_limits (
    endpoint TEXT NOT NULL,
    scope TEXT NOT NULL,
    family TEXT NOT NULL,
    stream_limit INTEGER NOT NULL,
    settled_at REAL NOT NULL,
    PRIMARY KEY (endpoint, scope, family)
)
"""


@dataclass(frozen=True, slots=True)
class RememberedLimit:
    """A limit a run settled at, and when (Unix seconds)."""

    stream_limit: int
    settled_at: float


def model_family(model: str) -> str:
    """The family a model's limit is kept under: its name without the version an answer
    reports (`GigaChat:2.0.28.2` -> `GigaChat`)."""
    return model.split(":", 1)[0]


def _endpoint(base_url: str) -> str:
    return base_url.rstrip("/")


def remember_limit(
    cache_dir: Path,
    base_url: str,
    scope: str,
    family: str,
    stream_limit: int,
    *,
    now: float | None = None,
) -> None:
    """Keep the limit a run settled at; it replaces the one remembered before."""
    if stream_limit < 1:
        raise ValueError(f"a stream limit is at least 1, got {stream_limit}")
    settled_at = time.time() if now is None else now
    db = Database(cache_dir / LIMITS_FILE, _SCHEMA, SCHEMA_VERSION)
    try:
        with db.guard(), db.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO stream_limits VALUES (?, ?, ?, ?, ?)",
                (_endpoint(base_url), scope, family, stream_limit, settled_at),
            )
    finally:
        db.close()


def recall_limit(cache_dir: Path, base_url: str, scope: str, family: str) -> RememberedLimit | None:
    """The limit remembered for this endpoint, scope and family, or None."""
    if not (cache_dir / LIMITS_FILE).exists():
        return None
    db = Database(cache_dir / LIMITS_FILE, _SCHEMA, SCHEMA_VERSION)
    try:
        with db.guard() as conn:
            row = conn.execute(
                "SELECT stream_limit, settled_at FROM stream_limits "
                "WHERE endpoint = ? AND scope = ? AND family = ?",
                (_endpoint(base_url), scope, family),
            ).fetchone()
    finally:
        db.close()
    return None if row is None else RememberedLimit(int(row[0]), float(row[1]))
