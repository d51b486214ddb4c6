"""Starting one contender as a child process and measuring it the same way for all: wall
time, its CPU (user + sys from `wait4`), and `kill -9` when a condition becomes true."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

POLL_S = 0.05


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
    started = time.perf_counter()
    killed = False
    with log.open("wb") as err:
        child = subprocess.Popen(argv, env=dict(env), stdout=subprocess.DEVNULL, stderr=err)
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        elapsed = time.perf_counter() - started
        if elapsed > timeout_s:
            os.kill(child.pid, signal.SIGKILL)
            os.wait4(child.pid, 0)
            raise RuntimeError(f"{argv[1]} ran over {timeout_s:.0f} s; see {log}")
        if kill_when is not None and not killed and kill_when():
            os.kill(child.pid, signal.SIGKILL)
            killed = True
        time.sleep(POLL_S)
    child.returncode = os.waitstatus_to_exitcode(status)
    return ChildRun(
        exit_code=child.returncode,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        wall_seconds=time.perf_counter() - started,
        killed=killed,
        stderr_tail=log.read_text(encoding="utf-8", errors="replace")[-1500:],
    )
