"""The settings of `--mode batches` (what GigaChat does not document about its batch API)
and the pacing of its status polls."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from batch.errors import ConfigError


@dataclass(frozen=True)
class BatchesSettings:
    """What GigaChat does not document about its batch API, as settings: only the 500-line
    limit is documented; the byte limit, the completion window and the polling are ours."""

    max_lines: int = 500
    max_bytes: int = 20 * 1024 * 1024
    completion_window_s: float = 24 * 3600.0
    completion_timeout_s: float = 24 * 3600.0
    poll_initial_s: float = 2.0
    poll_max_s: float = 60.0
    max_active: int = 100

    def __post_init__(self) -> None:
        if not 1 <= self.max_lines <= 500:
            raise ConfigError(f"--batch-lines must be between 1 and 500, got {self.max_lines}")
        if self.max_bytes < 1 or self.max_active < 1:
            raise ConfigError("--batch-bytes and the number of waiting batches must be >= 1")
        if self.poll_initial_s <= 0 or self.poll_max_s < self.poll_initial_s:
            raise ConfigError("need 0 < the first poll interval <= the longest")



@dataclass
class PollPacing:
    """The interval between polling rounds: grows x1.5 up to the longest, with ±20% jitter;
    a 429 without Retry-After doubles its own backoff."""

    initial: float
    longest: float
    interval: float = 0.0
    backoff_429: float = 0.0
    rng: random.Random = field(default_factory=random.Random)

    def next_round(self) -> float:
        self.interval = min(self.longest, self.interval * 1.5 if self.interval else self.initial)
        return self.interval * self.rng.uniform(0.8, 1.2)

    def after_429(self, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        self.backoff_429 = min(self.longest, max(self.initial, self.backoff_429 * 2))
        return self.backoff_429 * self.rng.uniform(0.8, 1.2)
