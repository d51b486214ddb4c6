"""How embedding jobs are packed into requests: per model, at most `batch_size` jobs and
`max_chars` characters of distinct text each; a text repeated inside a pending batch is
sent once (`EmbeddingPayload.slots` maps each job to its text).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jobs.base import Batch, Job

# Jobs of at most this many models are pending at once; the oldest batch is sent early.
MAX_PENDING_MODELS = 8


@dataclass(frozen=True, slots=True)
class EmbeddingPayload:
    """One request: distinct `texts` in `input` order; `slots[i]` is the text of job i.
    `received` holds the answers (by text index) that a try of this request already got,
    e.g. the first half of a 413 bisection, so a retry of the batch never pays for them
    twice."""

    model: str
    texts: list[str]
    slots: list[int]
    received: dict[int, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _Pending:
    jobs: list[Job] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    texts: dict[str, int] = field(default_factory=dict)
    chars: int = 0


class EmbeddingPacker:
    """Packs jobs into requests per model: at most `batch_size` jobs and `max_chars`
    characters of distinct text each (a longer text goes alone)."""

    def __init__(self, batch_size: int, max_chars: int) -> None:
        self.batch_size = batch_size
        self.max_chars = max_chars
        self._pending: dict[str, _Pending] = {}

    def add(self, job: Job) -> list[Batch]:
        model: str = job.request["model"]
        text: str = job.request["text"]
        full: list[Batch] = []
        pending = self._pending.get(model)
        if (
            pending is not None
            and text not in pending.texts
            and pending.chars + len(text) > self.max_chars
        ):
            full.append(self._close(model))
            pending = None
        if pending is None:
            pending = self._pending[model] = _Pending()
            if len(self._pending) > MAX_PENDING_MODELS:
                full.append(self._close(next(iter(self._pending))))
        if text not in pending.texts:
            pending.texts[text] = len(pending.texts)
            pending.chars += len(text)
        pending.jobs.append(job)
        pending.slots.append(pending.texts[text])
        if len(pending.jobs) >= self.batch_size:
            full.append(self._close(model))
        return full

    def flush(self) -> list[Batch]:
        return [self._close(model) for model in list(self._pending)]

    def _close(self, model: str) -> Batch:
        pending = self._pending.pop(model)
        payload = EmbeddingPayload(model=model, texts=list(pending.texts), slots=pending.slots)
        return Batch(jobs=pending.jobs, payload=payload)
