"""The counting pass of `gigabatch estimate`: stream jobs, count their billed input exactly.

Jobs are read once, in order; each job's billed input (the kind's `billed_input`) is split into
texts that are packed, per model, into `/tokens/count` calls of many texts each. A fixed
set of workers sends the calls through the run engine's `AdaptiveLimiter` (so a 429 with
`Retry-After` pauses every worker) and `call_with_retry`, fed by a bounded stream: memory
stays flat whatever the file's size. Repeated texts (a shared system prompt) are counted
once and multiplied.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import anyio
import anyio.to_thread
from anyio.streams.memory import MemoryObjectSendStream

from batch.api_types import TokenCount
from batch.errors import ApiError, PermanentError
from batch.estimate_math import (
    COUNT_BATCH_CHARS,
    COUNT_BATCH_TEXTS,
    Calibration,
    Tally,
    approximate_tokens,
)
from batch.limiter import AdaptiveLimiter
from batch.lru import Lru, text_key
from batch.pipeline import run_pipeline
from batch.projection import Reservoir
from batch.retry import RetryPolicy, call_with_retry, retry_after_capped
from jobs.base import BilledInput, Job, JobKind

# Counted texts remembered (by digest) so a text repeated across the file is counted once.
COUNTED_CACHE = 65_536
# Embedding texts remembered to mirror the run's deduplication: a text repeated within this
# window is answered from the embeddings kind's vector cache, so it is not billed again.
EMBED_DEDUP_WINDOW = 4_096
# Jobs read per hop to the reading thread.
READ_CHUNK = 512
# Prompt-cache sessions remembered (the emulator remembers 10,000).
SESSIONS = 10_000

CountFn = Callable[[Sequence[str], str], Awaitable[list[int]]]


@dataclass(slots=True)
class CountStats:
    """How far the counting pass is, for the progress line and the report."""

    jobs: int = 0
    texts: int = 0
    calls: int = 0
    uncounted_texts: int = 0
    uncounted_reason: str | None = None
    over_limit: int = 0  # texts over the input limit of their kind and model
    started: float = field(default_factory=time.monotonic)

    def line(self, total: int | None) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        of = f"/{total:,}" if total else ""
        return (
            f"counting input tokens: {self.jobs:,}{of} jobs, {self.texts:,} texts in "
            f"{self.calls:,} calls ({self.jobs / elapsed:,.0f} jobs/s)"
        )


@dataclass(slots=True)
class _Pending:
    # text -> [times it is billed, times it is a cacheable prefix]
    texts: dict[str, list[int]] = field(default_factory=dict)
    chars: int = 0


@dataclass(frozen=True, slots=True)
class CountCall:
    """One /tokens/count request: distinct texts of one model, with how many times each is
    billed and how many of those it repeats a session's cached prefix."""

    model: str
    texts: list[str]
    times: list[int]
    cached: list[int]


class InputCounter:
    """Turns jobs into a Tally: rows and output bounds at once, input tokens as counted."""

    def __init__(
        self,
        kind: JobKind,
        tally: Tally,
        *,
        message_overhead: int | None = None,
        max_texts: int = COUNT_BATCH_TEXTS,
        max_chars: int = COUNT_BATCH_CHARS,
        sampler: Reservoir[tuple[Job, str]] | None = None,
    ) -> None:
        self.kind = kind
        self.tally = tally
        self.message_overhead = message_overhead
        self.max_texts = max_texts
        self.max_chars = max_chars
        self.sampler = sampler
        self.stats = CountStats()
        self._pending: dict[str, _Pending] = {}
        self._counted: Lru[int] = Lru(COUNTED_CACHE)
        self._embedded: Lru[bool] = Lru(EMBED_DEDUP_WINDOW)
        self._sessions: Lru[list[bytes]] = Lru(SESSIONS)

    def _cached_prefix(self, billed: BilledInput) -> list[str]:
        """The messages of a request the prompt cache would serve: those it shares, from
        the start, with the previous request of its session (never the last message)."""
        if billed.session is None:
            return []
        keys = list(billed.message_keys)
        previous = self._sessions.get(billed.session.encode())
        self._sessions.put(billed.session.encode(), keys)
        if previous is None:
            return []
        shared = 0
        for old, new in zip(previous, keys[:-1], strict=False):  # lengths differ
            if old != new:
                break
            shared += 1
        return list(billed.message_texts[:shared])

    def add(self, job: Job) -> list[CountCall]:
        """Tally one job; returns the count calls that became full."""
        self.stats.jobs += 1
        billed = self.kind.billed_input(job, message_overhead=self.message_overhead)
        prefix = self._cached_prefix(billed)
        self.tally.add_row(
            billed.model,
            output_bound=billed.output_bound,
            default_bound=billed.default_bound,
            messages=billed.messages,
            cached_messages=len(prefix),
        )
        if self.sampler is not None:
            self.sampler.offer((job, billed.model))
        if billed.deduplicated:
            key = text_key(billed.model, "\0".join(billed.texts))
            if self._embedded.get(key) is not None:
                return []  # the run answers it from its cache: not billed again
            self._embedded.put(key, True)
        per_message = billed.overhead // billed.messages if billed.messages else 0
        self.tally.add_input(billed.model, billed.overhead, cacheable=len(prefix) * per_message)
        cached = Counter(text for text in prefix if text) if prefix else None
        full: list[CountCall] = []
        for text in billed.texts:
            self.stats.texts += 1
            is_cached = 0
            if cached is not None and cached[text] > 0:
                cached[text] -= 1
                is_cached = 1
            known = self._counted.get(text_key(billed.model, text))
            if known is not None:
                self._add_counted(billed.model, known, 1, is_cached)
                continue
            pending = self._pending.get(billed.model)
            if (
                pending is not None
                and text not in pending.texts
                and (
                    len(pending.texts) >= self.max_texts
                    or pending.chars + len(text) > self.max_chars
                )
            ):
                full.append(self._close(billed.model))
                pending = None
            if pending is None:
                pending = self._pending[billed.model] = _Pending()
            counts = pending.texts.setdefault(text, [0, 0])
            if counts[0] == 0:
                pending.chars += len(text)
            counts[0] += 1
            counts[1] += is_cached
        return full

    def flush(self) -> list[CountCall]:
        return [self._close(model) for model in list(self._pending)]

    def _close(self, model: str) -> CountCall:
        pending = self._pending.pop(model)
        counts = list(pending.texts.values())
        return CountCall(model, list(pending.texts), [c[0] for c in counts], [c[1] for c in counts])

    def counted(self, call: CountCall, tokens: Sequence[int]) -> None:
        """Record the answer to one count call."""
        self.stats.calls += 1
        for text, count, times, cached in zip(
            call.texts, tokens, call.times, call.cached, strict=True
        ):
            self._counted.put(text_key(call.model, text), count)
            self._add_counted(call.model, count, times, cached)

    def _add_counted(self, model: str, count: int, times: int, cached: int) -> None:
        """Bill a counted text `times` times (`cached` of them from the prompt cache)."""
        admitted = self.kind.admit_input(model, count)
        if admitted.over_limit:
            self.stats.over_limit += times
        cacheable = max(admitted.tokens, 0) * cached
        self.tally.add_input(model, admitted.tokens * times, cacheable=cacheable)

    def uncountable(self, call: CountCall, reason: str) -> None:
        """The API refused to count these texts (a permanent error): approximate them."""
        self.stats.uncounted_texts += len(call.texts)
        self.stats.uncounted_reason = reason
        for text, times, cached in zip(call.texts, call.times, call.cached, strict=True):
            tokens = approximate_tokens(text)
            self.tally.add_input(call.model, tokens * times, cacheable=tokens * cached)


def count_offline(jobs: Iterable[Job], counter: InputCounter) -> None:
    """The counting pass without the API: every text approximated from its characters."""
    for job in jobs:
        for call in counter.add(job):
            counter.uncountable(call, "offline")
    for call in counter.flush():
        counter.uncountable(call, "offline")
    counter.stats.uncounted_reason = None


async def count_jobs(
    jobs: Iterator[Job],
    counter: InputCounter,
    count: CountFn,
    *,
    workers: int,
) -> None:
    """The counting pass against the API: `workers` tasks send the count calls. A request
    that fails for good (fatal, or retryable and out of attempts) stops the pass and is
    raised as itself."""
    failures: list[ApiError] = []

    def next_chunk() -> list[Job]:
        return list(itertools.islice(jobs, READ_CHUNK))

    async def produce(send: MemoryObjectSendStream[CountCall]) -> None:
        # Reading and parsing the file happen in a thread, a chunk per hop, so the
        # workers and the progress line keep running on the event loop meanwhile.
        while chunk := await anyio.to_thread.run_sync(next_chunk):
            for job in chunk:
                for call in counter.add(job):
                    await send.send(call)
        for call in counter.flush():
            await send.send(call)

    async def handle(call: CountCall) -> bool:
        try:
            tokens = await count(call.texts, call.model)
        except PermanentError as exc:
            counter.uncountable(call, str(exc))
            return True
        except ApiError as exc:
            failures.append(exc)
            scope.cancel()
            return False
        counter.counted(call, tokens)
        return True

    with anyio.CancelScope() as scope:
        await run_pipeline(produce, handle, workers=workers)
    if failures:
        raise failures[0]


def limited_counter(
    tokens_count: Callable[[Sequence[str], str], Awaitable[Sequence[TokenCount]]],
    limiter: AdaptiveLimiter,
    policy: RetryPolicy,
) -> CountFn:
    """A count function that goes through the run's limiter, cooldown and retry policy
    (`tokens_count` is the client's method)."""

    async def count(texts: Sequence[str], model: str) -> list[int]:
        async def attempt() -> list[int]:
            async with limiter.slot():
                with retry_after_capped(policy):
                    answer = await tokens_count(texts, model)
            return [item.tokens for item in answer]

        return await call_with_retry(attempt, policy)

    return count


async def measure_overhead(
    kind: JobKind, answered: Sequence[tuple[Job, int]], count: CountFn, *, assumed: int
) -> Calibration:
    """The per-message overhead the API really billed for sampled jobs: `answered`
    pairs each job with the prompt tokens it was billed (cached ones included), and its
    texts are counted again here, without any assumed overhead."""
    counted = messages = billed = 0
    texts_by_model: dict[str, list[str]] = {}
    for job, prompt_tokens in answered:
        job_input = kind.billed_input(job, message_overhead=0)
        texts_by_model.setdefault(job_input.model, []).extend(job_input.texts)
        messages += job_input.messages
        billed += prompt_tokens
    for model, texts in texts_by_model.items():
        for start in range(0, len(texts), COUNT_BATCH_TEXTS):
            counted += sum(await count(texts[start : start + COUNT_BATCH_TEXTS], model))
    return Calibration(len(answered), messages, counted, billed, assumed)
