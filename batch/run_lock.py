"""One run per output directory: an exclusive advisory lock (`flock`) on OUT/gigabatch.lock,
held for the run's life. The kernel releases it when the process dies, `kill -9` included,
so a lock left by a dead run never blocks; the file itself stays and only says who held it.

A second run finds the lock taken and stops before it sends or changes anything, naming
the process (pid, host, start time) that holds it. Readers (`gigabatch status`) take no lock.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

import orjson

from batch.errors import OutputError, OutputLocked
from batch.storage import output_errors

LOCK = "gigabatch.lock"


class RunLock:
    """The lock of one output directory, held from `acquire` to `release`."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, out_dir: Path, command: str = "run") -> RunLock:
        """Take the lock of `out_dir` (created if need be) or raise OutputLocked at once."""
        path = out_dir / LOCK
        with output_errors("create"):
            out_dir.mkdir(parents=True, exist_ok=True)
        with output_errors("open", path):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise OutputLocked(
                f"{out_dir} is in use by another gigabatch run ({holder}); wait for it to "
                "finish, or use another --out"
            ) from None
        except OSError:
            os.close(fd)
            raise
        lock = cls(path, fd)
        try:
            with output_errors("write", path):
                lock._write_holder(command)
        except OutputError:
            lock.release()
            raise
        return lock

    def _write_holder(self, command: str) -> None:
        assert self._fd is not None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": command,
        }
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, orjson.dumps(info) + b"\n", 0)

    def release(self) -> None:
        """Give the lock up (closing the file releases it); the file is left in place, since
        removing it could let two later runs lock two different files."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _holder(fd: int) -> str:
    """Who holds the lock, as the holder wrote it."""
    try:
        info = orjson.loads(os.pread(fd, 4096, 0))
        return (
            f"pid {info['pid']} on {info['host']}, {info.get('command', 'run')} started "
            f"{info['started_at']}"
        )
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
        return "a process that has not said who it is yet"
