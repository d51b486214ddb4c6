"""Signals before the run's workers exist: `EarlySignals.watch` shortens the GIL switch
interval while it waits (so the main thread sees a signal at once while a thread validates)
and restores it after; `check` raises Interrupted once a signal came."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from functools import partial
from pathlib import Path

import anyio
import pytest

from batch.errors import Interrupted
from batch.preparing import keep_spec
from batch.stopping import EarlySignals
from jobs.readers import validate_jobs
from jobs.registry import kind_for


def test_watch_shortens_the_switch_interval_and_restores_it() -> None:
    before = sys.getswitchinterval()
    seen: list[float] = []

    async def main() -> None:
        early = EarlySignals()
        async with anyio.create_task_group() as group:
            await group.start(early.watch)
            seen.append(sys.getswitchinterval())
            group.cancel_scope.cancel()

    anyio.run(main)
    assert seen[0] < 0.001 < before
    assert sys.getswitchinterval() == before


def test_a_signal_stops_validation_within_a_moment(tmp_path: Path) -> None:
    """SIGTERM while a thread validates 400k lines reaches its `check` at once: with the
    default 5 ms switch interval the main thread took 0.05-0.8 s to see it (and 2-5 s in
    the CLI), now 5-10 ms. The signal comes from another thread, timed when it was sent."""
    jobs = tmp_path / "jobs.jsonl"
    with jobs.open("w") as f:
        f.writelines(f'{{"id": "q{i}", "prompt": "question {i}"}}\n' for i in range(400_000))
    kind = kind_for("chat")
    validate = partial(validate_jobs, jobs, kind, keep=keep_spec(kind, ()))
    sent: list[float] = []

    def send() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        sent.append(time.monotonic())

    async def once() -> float:
        early = EarlySignals()
        async with anyio.create_task_group() as group:
            await group.start(early.watch)
            threading.Timer(0.3, send).start()
            with pytest.raises(Interrupted):
                await anyio.to_thread.run_sync(partial(validate, interrupt_check=early.check))
            stopped = time.monotonic()
            group.cancel_scope.cancel()
        return stopped - sent[-1]

    took = [anyio.run(once) for _ in range(3)]
    assert max(took) < 0.5, took  # 0.9-3.9 s (max of 3) before, 4 of 4 runs
