"""Group commit: many small hand-overs, few commits, none lost, failures not swallowed."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from batch.cache.group_commit import GroupCommit


class Sink:
    def __init__(self, fail: bool = False) -> None:
        self.groups: list[list[int]] = []
        self.fail = fail
        self.lock = threading.Lock()

    def commit(self, items: Sequence[int]) -> None:
        if self.fail:
            raise OSError("disk full")
        with self.lock:
            self.groups.append(list(items))


def test_items_handed_over_one_by_one_are_committed_in_few_groups() -> None:
    sink = Sink()
    commits = GroupCommit(sink.commit, interval=0.05)
    for i in range(200):
        commits.add([i])
    time.sleep(0.3)
    assert [i for group in sink.groups for i in group] == list(range(200))
    assert len(sink.groups) < 20
    commits.close()


def test_nothing_waits_longer_than_the_interval() -> None:
    sink = Sink()
    commits = GroupCommit(sink.commit, interval=0.05)
    commits.add([1])
    time.sleep(0.25)
    assert sink.groups == [[1]]
    commits.close()


def test_pending_items_are_visible_until_committed() -> None:
    sink = Sink()
    commits = GroupCommit(sink.commit, interval=30)
    commits.add([1, 2])
    assert commits.pending() == [1, 2]
    commits.flush()
    assert commits.pending() == []
    assert sink.groups == [[1, 2]]
    commits.close()


def test_past_max_pending_the_caller_commits_inline() -> None:
    sink = Sink()
    commits = GroupCommit(sink.commit, interval=30, max_pending=10)
    commits.add(list(range(10)))
    assert sink.groups == [list(range(10))]
    commits.close()


def test_close_commits_what_is_left() -> None:
    sink = Sink()
    commits = GroupCommit(sink.commit, interval=30)
    commits.add([7])
    commits.close()
    assert sink.groups == [[7]]


def test_a_failed_commit_is_raised_to_the_next_caller() -> None:
    commits = GroupCommit(Sink(fail=True).commit, interval=0.01)
    commits.add([1])
    time.sleep(0.2)
    with pytest.raises(OSError, match="disk full"):
        commits.add([2])
    # Raised once: the item refused with it was never queued, so close has nothing to do.
    commits.close()
