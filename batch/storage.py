"""The output directory's filesystem as a run meets it: an OSError becomes one line naming
the path and the errno, and a run checks before sending anything that it can write there
(a probe file, and room for its parts), so a full disk costs no answers that cannot be kept.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from batch.errors import OutputError

# A run does not start with less free space than this in its output directory: below it
# even a small part could not be committed (a part that does not fit later is kept and retried).
MIN_FREE_BYTES = 1024 * 1024
_PROBE_BYTES = 64 * 1024
_PROBE = ".gigabatch-probe.tmp"

_ADVICE = {
    errno.ENOSPC: "free some space or use another --out",
    errno.EDQUOT: "free some space or use another --out",
    errno.EROFS: "the filesystem is read-only: use another --out",
    errno.EACCES: "check the directory's permissions or use another --out",
    errno.EPERM: "check the directory's permissions or use another --out",
    errno.ENOTDIR: "a part of the path is a file, not a directory: use another --out",
    errno.EEXIST: "a file of that name is in the way: use another --out",
    # after mkdir -p: a filesystem that makes no files there (/proc), or a file removed
    errno.ENOENT: "the path is gone or cannot exist there: use another --out",
    errno.EIO: "the disk reports an I/O error: check it, or use another --out",
}


def describe(exc: OSError, doing: str = "write", path: Path | None = None) -> str:
    """'cannot write PATH: No space left on device (ENOSPC); free some space ...'; `path`
    names the file when the error does not (a write to an open file)."""
    if exc.filename is not None:
        path = exc.filename
    where = path if path is not None else "the output directory"
    code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    reason = exc.strerror or str(exc)
    advice = _ADVICE.get(exc.errno or 0)
    line = f"cannot {doing} {where}: {reason} ({code})"
    return f"{line}; {advice}" if advice else line


@contextlib.contextmanager
def output_errors(doing: str = "write", path: Path | None = None) -> Iterator[None]:
    """Turn an OSError inside the block into an OutputError of one line (naming `path`
    when the error names no file)."""
    try:
        yield
    except OSError as exc:
        raise OutputError(describe(exc, doing, path)) from None


def free_bytes(directory: Path) -> int:
    """Bytes an unprivileged writer may still use on `directory`'s filesystem."""
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize


def is_disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def check_output_dir(out_dir: Path) -> None:
    """OutputError, in one line, when `out_dir` could not be created or written: found by
    looking at its nearest existing ancestor, without creating anything (a run checks this
    before it writes a byte, so a failed start leaves nothing behind)."""
    probe = out_dir.absolute()
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        code = errno.ENOTDIR
    elif not os.access(probe, os.W_OK | os.X_OK):
        code = errno.EROFS if os.statvfs(probe).f_flag & os.ST_RDONLY else errno.EACCES
    else:
        return
    raise OutputError(describe(OSError(code, f"{os.strerror(code)} ({probe})"), "create", out_dir))


def check_writable(out_dir: Path, min_free: int = MIN_FREE_BYTES) -> None:
    """Create `out_dir` if need be, write and fsync a probe file in it, and check its free
    space; raises OutputError (path, errno, what to do) before anything is sent."""
    with output_errors("create"):
        out_dir.mkdir(parents=True, exist_ok=True)
    probe = out_dir / _PROBE
    try:
        with output_errors("write", probe), probe.open("wb") as f:
            f.write(b"\0" * _PROBE_BYTES)
            f.flush()
            os.fsync(f.fileno())
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    with output_errors("check the free space of"):
        free = free_bytes(out_dir)
    if free < min_free:
        raise OutputError(
            f"cannot write {out_dir}: only {free // 1024} KiB free, a run needs at least "
            f"{min_free // (1024 * 1024)} MiB (ENOSPC); free some space or use another --out"
        )
