"""Starting one contender as a child process and measuring it the same way for all: wall
time, its CPU (user + sys from `wait4`), and `kill -9` when a condition becomes true.

A contender may start processes of its own (Ray's local cluster: raylet, workers) that its
main process never reaps. On Linux this process becomes their subreaper, so they come back
to it as they end, and their CPU is counted too; `kill -9` hits the child and all its
descendants, as a crash of the machine running the job would."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

POLL_S = 0.05
LEFTOVER_GRACE_S = 10.0  # how long processes a contender left behind may take to exit
PR_SET_CHILD_SUBREAPER = 36


@dataclass(frozen=True)
class ChildRun:
    exit_code: int  # negative: the signal that ended it
    cpu_seconds: float
    wall_seconds: float
    killed: bool
    stderr_tail: str


def run_child(
    argv: Sequence[str],
    env: Mapping[str, str],
    log: Path,
    *,
    timeout_s: float,
    kill_when: Callable[[], bool] | None = None,
) -> ChildRun:
    """Run `argv` to its end (or SIGKILL it once `kill_when()` is true); stderr goes to
    `log`. A child still running after `timeout_s` is killed and reported as an error."""
    _become_subreaper()
    before = {p.pid for p in psutil.Process().children()}
    started = time.perf_counter()
    killed = False
    with log.open("wb") as err:
        child = subprocess.Popen(argv, env=dict(env), stdout=subprocess.DEVNULL, stderr=err,
                                 start_new_session=True)
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        elapsed = time.perf_counter() - started
        if elapsed > timeout_s:
            _kill_tree(child.pid)
            os.wait4(child.pid, 0)
            _reap_leftovers(before | {child.pid}, grace_s=0.0)
            raise RuntimeError(f"{argv[1]} ran over {timeout_s:.0f} s; see {log}")
        if kill_when is not None and not killed and kill_when():
            _kill_tree(child.pid)
            killed = True
        time.sleep(POLL_S)
    wall = time.perf_counter() - started
    cpu = usage.ru_utime + usage.ru_stime
    cpu += _reap_leftovers(before | {child.pid}, grace_s=0.0 if killed else LEFTOVER_GRACE_S)
    child.returncode = os.waitstatus_to_exitcode(status)
    return ChildRun(
        exit_code=child.returncode,
        cpu_seconds=cpu,
        wall_seconds=wall,
        killed=killed,
        stderr_tail=log.read_text(encoding="utf-8", errors="replace")[-1500:],
    )


def _become_subreaper() -> None:
    """Orphaned descendants come back to this process (Linux) rather than to init."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _kill_tree(pid: int) -> None:
    """SIGKILL `pid`, its process group and every descendant (Ray's workers start their own
    sessions), as a crash of the machine would end them all at once."""
    try:
        pids = [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        pids = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    for each in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(each, signal.SIGKILL)


def _reap_leftovers(known: set[int], *, grace_s: float) -> float:
    """Wait for the processes the child left behind (they came back to us as orphans),
    SIGKILL those still running after `grace_s`; their CPU seconds, user + sys."""
    deadline = time.perf_counter() + grace_s
    cpu = 0.0
    while True:
        leftovers = [p.pid for p in psutil.Process().children() if p.pid not in known]
        if not leftovers:
            return cpu
        for pid in leftovers:
            if time.perf_counter() >= deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            done, _, usage = os.wait4(pid, os.WNOHANG)
            if done:
                cpu += usage.ru_utime + usage.ru_stime
        time.sleep(POLL_S)
