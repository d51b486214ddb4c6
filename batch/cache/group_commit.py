"""Group commit: answers handed over one by one are committed together, at most
`interval` seconds after the first of them arrived, by one background thread.

A run receives hundreds of answers a second; one transaction each would spend the disk on
commits. Grouping them keeps every answer durable within ~100 ms at a few commits a second.
Answers not yet committed stay readable through `pending()`, so nothing is paid for twice
inside that window.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")

DEFAULT_INTERVAL_S = 0.1
# Past this many waiting items the caller commits inline: memory stays bounded however fast
# answers come.
MAX_PENDING = 20_000


class GroupCommit(Generic[Item]):
    """Buffers items and hands them to `commit` in groups, from its own thread."""

    def __init__(
        self,
        commit: Callable[[Sequence[Item]], None],
        *,
        interval: float = DEFAULT_INTERVAL_S,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self._commit = commit
        self._interval = interval
        self._max_pending = max_pending
        self._pending: list[Item] = []
        self._first_at = 0.0
        self._committing: Sequence[Item] = ()
        self._error: BaseException | None = None
        self._closed = False
        self._wake = threading.Condition()
        self._commit_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="gigabatch-group-commit")
        self._thread.daemon = True
        self._thread.start()

    def add(self, items: Sequence[Item]) -> None:
        """Queue items; they are committed within `interval` seconds. Raises the error of an
        earlier failed commit, so a full disk is not silently ignored."""
        if not items:
            return
        with self._wake:
            self._raise_failure()
            if self._closed:
                raise RuntimeError("group commit is closed")
            if not self._pending:
                self._first_at = time.monotonic()
                self._wake.notify()
            self._pending.extend(items)
            overflowing = len(self._pending) >= self._max_pending
        if overflowing:
            self.flush()

    def pending(self) -> list[Item]:
        """Items queued or being committed right now (not yet durable)."""
        with self._wake:
            return [*self._committing, *self._pending]

    def flush(self) -> None:
        """Commit everything queued now, in this thread."""
        with self._commit_lock:
            self._commit_taken()
        with self._wake:
            self._raise_failure()

    def close(self) -> None:
        """Commit what is queued and stop the thread."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()
        self.flush()

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._pending and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                delay = self._first_at + self._interval - time.monotonic()
                if delay > 0:
                    self._wake.wait(delay)
                    continue
            with self._commit_lock:
                self._commit_taken()

    def _commit_taken(self) -> None:
        with self._wake:
            taken, self._pending = self._pending, []
            self._committing = taken
        if not taken:
            return
        try:
            self._commit(taken)
        except BaseException as exc:
            with self._wake:
                self._error = exc
        finally:
            with self._wake:
                self._committing = ()

    def _raise_failure(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
