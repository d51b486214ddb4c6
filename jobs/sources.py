"""Where job records come from: the files of an input, what format each is, and streams.

An input is a file or a directory of files (JSONL, gzip or zstd JSONL, Parquet, mixed, read in
name order). Standard input, a FIFO or any other stream can only be read once while validation,
the fingerprint and the run each read the input, so a stream is first spooled into a file.
The format of a file is told by its first bytes where they are unmistakable (compression,
Parquet), else by its name; a file that is neither is refused with what to do, never skipped.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Literal

import pyarrow as pa

from batch.errors import JobFileError

PARQUET_SUFFIXES = (".parquet", ".pq")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
COMPRESSION_SUFFIXES = {".gz": "gzip", ".zst": "zstd"}
TABLE_SUFFIXES = (".csv", ".tsv")
STDIN = "-"
# A run spools a stream into OUT/input/, so a resume (and `run OUT/input/stdin.jsonl`) sees
# the same bytes.
SPOOL_DIR = "input"
SPOOL_NAME = "stdin"
_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"PAR1": "parquet",
    b"BZh": "bzip2",
    b"\xfd7zXZ": "xz",
    b"PK\x03\x04": "zip",
}
_SPOOL_SUFFIX = {"gzip": ".jsonl.gz", "zstd": ".jsonl.zst", "parquet": ".parquet"}
_CHUNK = 1 << 20
_READ_BUFFER = 1 << 16

Format = Literal["jsonl", "gzip", "zstd", "parquet"]


def sniff(path: Path) -> Format:
    """The format of one job file: its first bytes when they name a compression or Parquet,
    else its suffix (Parquet by name), else JSONL. CSV and unsupported compressions raise."""
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise JobFileError(f"{path}: cannot read: {exc.strerror}") from None
    found = next((kind for magic, kind in _MAGIC.items() if head.startswith(magic)), None)
    if found in ("gzip", "zstd", "parquet"):
        return found  # type: ignore[return-value]
    if found is not None:
        raise JobFileError(
            f"{path}: {found}-compressed, which gigabatch does not read: "
            "recompress with gzip or zstd, or decompress it"
        )
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    if suffix in TABLE_SUFFIXES:
        raise JobFileError(
            f"{path}: CSV is not a job format: convert it to Parquet, e.g. "
            f"`duckdb -c \"COPY (FROM '{path}') TO 'jobs.parquet'\"`, or to JSONL"
        )
    return "jsonl"


def is_job_file_name(name: str) -> bool:
    """Whether a directory entry's name says it holds jobs (`*.jsonl[.gz|.zst]`, `*.parquet`)."""
    lower = name.lower()
    for suffix in COMPRESSION_SUFFIXES:
        lower = lower.removesuffix(suffix)
    return lower.endswith(JSONL_SUFFIXES) or name.lower().endswith(PARQUET_SUFFIXES)


def input_files(path: Path) -> list[Path]:
    """The files a job input consists of: the file itself, or a directory's job files in
    name order. Hidden and `_`-prefixed entries (`_SUCCESS`, `.crc`) are skipped; any other
    entry that is not a job file is refused, so nothing is ignored silently."""
    if not path.exists():
        raise JobFileError(f"{path}: no such file or directory")
    if not path.is_dir():
        _check_regular(path)
        return [path]
    files: list[Path] = []
    for entry in sorted(path.iterdir()):
        if entry.name.startswith((".", "_")):
            continue
        if entry.is_dir():
            raise JobFileError(
                f"{entry}: a subdirectory; gigabatch reads the files of one directory "
                "(move it out, or give it as the input)"
            )
        if not is_job_file_name(entry.name):
            raise JobFileError(
                f"{entry}: not a job file (JSONL: .jsonl, .ndjson, .json, optionally .gz or "
                ".zst; Parquet: .parquet, .pq): move it out of the directory"
            )
        _check_regular(entry)
        files.append(entry)
    if not files:
        raise JobFileError(f"{path}: directory has no job files (*.jsonl, *.parquet, ...)")
    return files


def _check_regular(path: Path) -> None:
    if not stat.S_ISREG(path.stat().st_mode):
        raise JobFileError(
            f"{path}: not a regular file (a pipe or a device can be read only once): "
            f"pass '{STDIN}' to read standard input, or save it to a file first"
        )


def is_stream(path: Path) -> bool:
    """True for an input that can be read only once: a FIFO, /dev/stdin, a character device."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


@contextlib.contextmanager
def open_jsonl(path: Path, fmt: Format) -> Iterator[BinaryIO]:
    """The decompressed bytes of a JSONL file, as a buffered stream (memory stays flat)."""
    try:
        if fmt == "jsonl":
            handle: BinaryIO = path.open("rb")
        else:
            raw = pa.input_stream(str(path), compression=fmt)
            handle = io.BufferedReader(raw, _READ_BUFFER)
    except (OSError, pa.ArrowException) as exc:
        raise JobFileError(f"{path}: cannot read: {exc}") from None
    with handle:
        try:
            yield handle
        except (OSError, pa.ArrowException) as exc:
            raise JobFileError(f"{path}: cannot read ({fmt}): {exc}") from None


def spool_stdin(stream: BinaryIO, dest_dir: Path) -> Path:
    """Copy `stream` once into `dest_dir` (in chunks: memory stays flat) and return the file:
    `stdin.jsonl`, or `.jsonl.gz`, `.jsonl.zst`, `.parquet` after its first bytes. The copy
    is written under a temporary name, fsynced and renamed, so it is whole or absent; an
    identical spool already there is kept as it is."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{SPOOL_NAME}-", suffix=".tmp", dir=dest_dir)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            head = stream.read(8)
            out.write(head)
            while chunk := stream.read(_CHUNK):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if not head:
            raise JobFileError(
                "standard input is empty: nothing to run (to resume a run fed from standard "
                f"input, give its OUT/{SPOOL_DIR}/{SPOOL_NAME}.jsonl as the input)"
            )
        found = next((kind for magic, kind in _MAGIC.items() if head.startswith(magic)), "")
        dest = dest_dir / (SPOOL_NAME + _SPOOL_SUFFIX.get(found, ".jsonl"))
        for stale in dest_dir.glob(f"{SPOOL_NAME}.*"):
            if stale != dest:
                stale.unlink()
        if not (dest.exists() and _same_bytes(dest, tmp)):
            tmp.replace(dest)
        _fsync_dir(dest_dir)
        return dest
    except OSError as exc:
        raise JobFileError(f"cannot spool standard input into {dest_dir}: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


def spooled_input(arg: Path, dest_dir: Path) -> Path:
    """The input a command reads for the argument `arg`: the path itself, or, for `-` and
    for streams (a FIFO, /dev/stdin), their bytes spooled once into `dest_dir`."""
    if str(arg) == STDIN:
        if sys.stdin.isatty():
            raise JobFileError(
                "standard input is a terminal: pipe the jobs in "
                "(cat jobs.jsonl | gigabatch run - --out DIR)"
            )
        return spool_stdin(sys.stdin.buffer, dest_dir)
    if is_stream(arg):
        with arg.open("rb") as stream:
            return spool_stdin(stream, dest_dir)
    return arg


@contextlib.contextmanager
def temporary_spool(arg: Path) -> Iterator[Path]:
    """`spooled_input` for a command with no output directory (validate): a stream is
    spooled into a temporary directory, removed on exit; a file is used where it is."""
    if str(arg) != STDIN and not is_stream(arg):
        yield arg
        return
    with tempfile.TemporaryDirectory(prefix="gigabatch-stdin-") as spool:
        yield spooled_input(arg, Path(spool))


def _same_bytes(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with a.open("rb") as left, b.open("rb") as right:
        while chunk := left.read(_CHUNK):
            if chunk != right.read(len(chunk)):
                return False
    return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
