"""What is where in an output directory, and the file operations that keep it whole:
atomic files, the parts' directories, --restart's clearing and --retry-failed's setting
aside, and reading the manifest or a part with a message that names a damaged one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import pyarrow as pa

from batch.errors import OutputError
from batch.storage import describe, output_errors

MANIFEST = "manifest.json"
SUMMARY = "summary.json"
INVALID = "invalid.jsonl"
RESULTS = "results"
FAILED = "failed"
SUPERSEDED = "superseded"
_TRASH = ".trash"


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A file that appears at `path` whole or not at all: written under a dot-name (which a
    later open clears if a crash left it), fsynced, renamed over `path`, directory fsynced.
    Nothing is renamed into place if the block raises, and the dot-name is removed then
    (a full disk leaves no half part behind)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)  # a write to the open file names no path
        raise
    fsync_dir(path.parent)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (see `atomic_file`)."""
    with atomic_file(path) as f:
        f.write(data)


def part_number(path: Path) -> int:
    """N of `part-N.parquet`, `part-N-TOKEN.parquet` (an output URI's) or `failed-N`."""
    try:
        return int(path.stem.split("-")[1])
    except (IndexError, ValueError):
        return 0


def part_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(directory.glob("part-*.parquet"), key=part_number)


@contextlib.contextmanager
def damaged_part(path: Path | str) -> Iterator[None]:
    """A part that cannot be read (truncated, not Parquet, unreadable) is named, with what
    to do; a part that was committed is never half-written, so something else damaged it.
    `path` is a local path or an output URI's part, as shown."""
    try:
        yield
    except OSError as exc:
        raise OutputError(describe(exc, "read")) from None
    except (pa.ArrowException, ValueError) as exc:
        parent = path.parent if isinstance(path, Path) else path.rpartition("/")[0]
        raise OutputError(
            f"{path} is damaged and cannot be read ({_first_line(exc)}); move it out of "
            f"{parent} and run again: its jobs are then sent again"
        ) from None


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest at `path`; a damaged one is named, with what to do."""
    with output_errors("read"):
        data = path.read_bytes()
    return parse_manifest(data, path)


def parse_manifest(data: bytes, path: Path | str) -> dict[str, Any]:
    """The manifest read from `path` as `data`; a damaged one is named, with what to do."""
    try:
        manifest = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        manifest = exc
    if not isinstance(manifest, dict):
        raise OutputError(
            f"{path} is damaged (not a JSON object): it no longer says which input and "
            "settings made this output. If they are this run's, delete it and run again (the "
            "parts are kept and count as done); otherwise use --restart or another --out"
        )
    return manifest


def prepare_directory(out_dir: Path) -> None:
    """The directories a run writes in, cleared of what an interrupted run left: dot-named
    temporary files and a --restart's trash."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".*.tmp"):
        stale.unlink()
    _empty_trash(out_dir)
    for sub in (RESULTS, FAILED):
        (out_dir / sub).mkdir(exist_ok=True)
        for stale in (out_dir / sub).glob(".*.tmp"):
            stale.unlink()


def clear_output(out_dir: Path) -> None:
    """Delete what a previous run wrote in `out_dir` (for --restart); nothing else.

    The parts' directories are first renamed into OUT/.trash/, each in one rename, then the
    manifest, summary and invalid log are removed, then the trash. However this is
    interrupted, no old part is left where a scan would count it as done, and the trash
    is emptied by the next open."""
    with output_errors("clear"):
        if not out_dir.is_dir():
            return
        trash = out_dir / _TRASH
        trash.mkdir(exist_ok=True)
        for sub in (RESULTS, FAILED, SUPERSEDED):
            if (out_dir / sub).exists():
                (out_dir / sub).replace(trash / f"{sub}-{time.time_ns()}")
        fsync_dir(out_dir)
        for name in (MANIFEST, SUMMARY, INVALID):
            with contextlib.suppress(FileNotFoundError):
                (out_dir / name).unlink()
        _empty_trash(out_dir)


def _empty_trash(out_dir: Path) -> None:
    trash = out_dir / _TRASH
    if trash.exists():
        shutil.rmtree(trash)


def set_failed_aside(out_dir: Path) -> Path | None:
    """Move failed/ to superseded/failed-<n>/ in one rename, leaving an empty failed/."""
    failed = out_dir / FAILED
    if not part_files(failed):
        return None
    superseded = out_dir / SUPERSEDED
    superseded.mkdir(exist_ok=True)
    n = 1 + max((part_number(p) for p in superseded.glob("failed-*")), default=0)
    target = superseded / f"failed-{n}"
    failed.replace(target)
    fsync_dir(out_dir)
    failed.mkdir()
    return target
