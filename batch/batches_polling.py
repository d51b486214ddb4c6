"""Status polls of the batches a `--mode batches` run waits on. When several wait, one round
is one list-all request (`GET /batches`); a batch the list leaves out (a paged or partial
list: the API documents no paging) and a batch waiting alone are asked for by id. Every call
goes through `PatientApi`: the run's retries, and a 429 waits out its Retry-After.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, TypeVar

import anyio

from batch.api_types import BatchInfo
from batch.batches_settings import PollPacing
from batch.errors import ApiError, PermanentError, RateLimited, RetryableError
from batch.retry import RetryPolicy, call_with_retry
from batch.summary import RunStats

logger = logging.getLogger(__name__)
T = TypeVar("T")

# What a poll learnt of one batch: its status, or the error that asking for it raised.
Polled = BatchInfo | ApiError | ValueError


class PatientApi:
    """Calls of a batch run: the run's retry policy, and a 429 first waits for its
    Retry-After (or the pacing's doubling backoff); calls and 429s count in `stats`."""

    def __init__(self, retry: RetryPolicy, pacing: PollPacing, stats: RunStats) -> None:
        self.retry = retry
        self.pacing = pacing
        self.stats = stats

    async def __call__(self, attempt: Callable[[], Awaitable[T]]) -> T:
        async def patient() -> T:
            self.stats.requests += 1
            try:
                return await attempt()
            except RateLimited as exc:
                self.stats.rate_limited += 1
                await anyio.sleep(self.pacing.after_429(exc.retry_after))
                raise

        return await call_with_retry(patient, self.retry)


async def poll_statuses(api: PatientApi, client: Any, ids: Sequence[str]) -> dict[str, Polled]:
    """What the server says of each of `ids` now: one list request when there are several
    (a failed list is tried per id only when the list itself is refused for good)."""
    polled: dict[str, Polled] = {}
    if len(ids) > 1:
        try:
            listed = await api(client.batch_status)
        except (RetryableError, ValueError) as exc:
            logger.warning("listing the batches failed, trying later: %s", exc)
            return {batch_id: exc for batch_id in ids}
        except PermanentError as exc:
            logger.warning("listing the batches was refused, asking for each: %s", exc)
            listed = []
        wanted = set(ids)
        polled = {info.id: info for info in listed if info.id in wanted}
    for batch_id in ids:
        if batch_id not in polled:
            polled[batch_id] = await _one(api, client, batch_id)
    return polled


async def _one(api: PatientApi, client: Any, batch_id: str) -> Polled:
    try:
        answer: list[BatchInfo] = await api(partial(client.batch_status, batch_id))
    except (RetryableError, PermanentError, ValueError) as exc:
        return exc
    found = [info for info in answer if info.id == batch_id]
    if not found:
        return ValueError(f"the status of batch {batch_id} does not name it")
    return found[0]
