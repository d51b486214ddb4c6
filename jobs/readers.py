"""Job files in, jobs out: streaming readers for JSONL and Parquet, and whole-file validation.

Nothing here holds a file in memory: JSONL (plain, gzip or zstd) is read line by line, a line
over the API's request limit skipped in chunks, Parquet in bounded record batches; a directory
is its job files in name order (`jobs.sources`). A malformed or oversized record is a
`Problem` naming the file, the line or row and the field, never a traceback. Duplicate ids are
found with 8 bytes per job (64-bit id hashes, sorted), then confirmed by a second pass that
looks only at the ids whose hashes collided.
"""

from __future__ import annotations

import dataclasses
import hashlib
from array import array
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from batch.errors import JobFileError
from batch.id_hashes import id_hash, repeated_hashes
from jobs.base import Job, JobInvalid, JobKind, Problem, SourceLocation
from jobs.passthrough import ColumnTypes, KeepSpec, KeptColumns
from jobs.sources import Format, input_files, open_jsonl, sniff
from jobs.validation import (
    MAX_REQUEST_BYTES,
    TOKEN_CHECK_BYTES,
    oversized_line,
    oversized_request,
)

# Rows per Parquet record batch: bounds memory whatever the file's row-group size.
PARQUET_BATCH_ROWS = 1024
_UTF8_BOM = b"\xef\xbb\xbf"
# JSONL is read in lines of at most this many bytes at a time.
_CHUNK = 1 << 20
# Names the fingerprint's recipe: those of other recipes (older versions hashed the file's
# name too) are told apart on resume instead of looking like a changed input.
FINGERPRINT_SCHEME = "content-blake2b"
# Records between two calls of validate_jobs' interrupt_check: a few ms of validation, so
# a signal stops it at once even when a loaded machine gives the process little CPU.
_CHECK_EVERY = 256

Record = dict[str, Any]


def iter_records(
    path: Path,
    *,
    columns: Collection[str] | None = None,
    batch_rows: int = PARQUET_BATCH_ROWS,
) -> Iterator[tuple[SourceLocation, Record | Problem]]:
    """Every record of a job input with its location, or a Problem when the record cannot be
    read. `columns` projects Parquet onto the columns a kind reads (those the file lacks are
    simply absent); JSONL lines always keep every key, so typos can be reported."""
    for file in input_files(path):
        fmt = sniff(file)
        if fmt == "parquet":
            yield from _parquet_records(file, columns, batch_rows)
        else:
            yield from _jsonl_records(file, fmt)


def _jsonl_records(path: Path, fmt: Format) -> Iterator[tuple[SourceLocation, Record | Problem]]:
    name = str(path)
    first = True
    with open_jsonl(path, fmt) as handle:
        for number, line in enumerate(_bounded_lines(handle), 1):
            location = SourceLocation(name, number, "line")
            if line is not None and number == 1 and line.startswith(_UTF8_BOM):
                line = line[len(_UTF8_BOM) :]
            if line is not None and not line.strip():
                continue
            record = _parse_line(line)
            if isinstance(record, str):
                message = _hinted(record, line, path) if first and line else record
                yield location, Problem(location, None, message)
            else:
                yield location, record
            first = False


def _parse_line(line: bytes | None) -> Record | str:
    """The JSON object on `line` (None: a line over the request limit), or what is wrong."""
    if line is None:
        return oversized_line(MAX_REQUEST_BYTES)
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return _json_problem(line, exc)
    if not isinstance(value, dict):
        return f"expected a JSON object, got {_json_type(value)}"
    return value


def _bounded_lines(handle: BinaryIO) -> Iterator[bytes | None]:
    """The lines of `handle`; None for a line over the request limit, which is read on in
    chunks and dropped rather than held (a 50 MB line costs no more memory than 20 MB)."""
    while line := handle.readline(_CHUNK):
        if line.endswith(b"\n") or len(line) < _CHUNK:
            yield line
            continue
        parts, size = [line], len(line)
        while (more := handle.readline(_CHUNK)) and size <= MAX_REQUEST_BYTES:
            parts.append(more)
            size += len(more)
            if more.endswith(b"\n"):
                break
        if size <= MAX_REQUEST_BYTES:
            yield b"".join(parts)
            continue
        del parts
        while more and not more.endswith(b"\n"):
            more = handle.readline(_CHUNK)
        yield None


def _hinted(message: str, line: bytes, path: Path) -> str:
    """The problem of a file's first record, with what the file looks like instead when the
    record shows it (a JSON array, pretty-printed JSON, CSV)."""
    head = line.lstrip()
    if head.startswith(b"["):
        return (
            f"{message}; this looks like a JSON array; JSONL needs one object per line "
            f"— convert with `jq -c '.[]' {path}`"
        )
    if head.rstrip() == b"{":
        return (
            f"{message}; this looks like pretty-printed JSON; JSONL needs one object per "
            f"line — convert with `jq -c . {path}`"
        )
    if not head.startswith(b"{") and (b"," in head or b"\t" in head):
        return (
            f"{message}; this looks like CSV, which is not a job format: convert it to "
            "Parquet or JSONL (e.g. with duckdb or pandas)"
        )
    return message


def _json_problem(line: bytes, exc: orjson.JSONDecodeError) -> str:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"not valid UTF-8 (byte {bad.start + 1} of the line)"
    return f"not valid JSON: {exc.msg} at column {exc.colno}"


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


def _parquet_records(
    path: Path, columns: Collection[str] | None, batch_rows: int
) -> Iterator[tuple[SourceLocation, Record | Problem]]:
    name = str(path)
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise JobFileError(f"{path}: not a readable Parquet file ({exc})") from None
    present = set(parquet.schema_arrow.names)
    wanted = None if columns is None else [c for c in dict.fromkeys(columns) if c in present]
    number = 0
    with parquet:
        if wanted == []:
            # None of the kind's columns: every row is a record with no fields.
            for number in range(1, parquet.metadata.num_rows + 1):
                yield SourceLocation(name, number, "row"), {}
            return
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=wanted):
            for record in batch.to_pylist():
                number += 1
                yield SourceLocation(name, number, "row"), record


def content_fingerprint(path: Path, interrupt_check: Callable[[], None] | None = None) -> str:
    """A hash of what the job input holds, streamed: every file's bytes in order, each
    framed by its size; for a directory also each file's name (ids of rows without one are
    `<file name>:<row>`), but never the path of the file or the directory, so a copied or
    moved input resumes its output and a changed byte does not. `interrupt_check` is called
    before each MiB: what it raises stops the hashing."""
    digest = hashlib.blake2b(digest_size=16)
    directory = path.is_dir()
    for file in input_files(path):
        try:
            with file.open("rb") as handle:
                if directory:
                    digest.update(b"name\0" + file.name.encode() + b"\0")
                digest.update(str(file.stat().st_size).encode() + b"\0")
                while chunk := handle.read(1 << 20):
                    if interrupt_check is not None:
                        interrupt_check()
                    digest.update(chunk)
        except OSError as exc:
            raise JobFileError(f"{file}: cannot read: {exc.strerror}") from None
    return f"{FINGERPRINT_SCHEME}:{digest.hexdigest()}"


def iter_outcomes(
    path: Path, kind: JobKind, keep: KeepSpec | None = None
) -> Iterator[tuple[SourceLocation, Job | list[Problem]]]:
    """Each record of `path` as the kind's Job, or the list of its problems; with `keep`,
    each Job's `kept` holds the record's kept columns (as read, not yet typed).

    Records without an id get their line or row number; in a directory of Parquet files,
    where row numbers restart in each file, they get `<file name>:<row>` instead."""
    sources = kind.source_fields()
    id_source = sources.get("id")
    numbered_by_file = path.is_dir()
    size_problems = kind.size_problems
    columns = list(sources.values()) if keep is None else keep.read_columns(sources.values())
    for location, record in iter_records(path, columns=columns):
        if isinstance(record, Problem):
            yield location, [record]
            continue
        kept = keep.split(record) if keep is not None else None
        if numbered_by_file and id_source is not None and record.get(id_source) is None:
            record[id_source] = f"{Path(location.file).name}:{location.number}"
        try:
            job = kind.job_from_record(record, location)
        except JobInvalid as exc:
            yield location, exc.problems
            continue
        # A request certain to be refused for its size is a problem now, not a 413 later;
        # one too small to hold an over-long text is not worth asking the kind about.
        size = len(orjson.dumps(job.request))
        if size > MAX_REQUEST_BYTES:
            yield location, [Problem(location, None, oversized_request(size))]
        elif size > TOKEN_CHECK_BYTES and (problems := size_problems(job)):
            yield location, problems
        else:
            yield location, job if kept is None else dataclasses.replace(job, kept=kept)


def read_jobs(
    path: Path,
    kind: JobKind,
    *,
    skip_invalid: bool = False,
    on_problem: Callable[[Problem], None] | None = None,
    exclude: Iterable[Problem] = (),
    keep: KeptColumns | None = None,
) -> Iterator[Job]:
    """Stream the valid jobs of `path`. Each problem goes to `on_problem`; without
    `skip_invalid` the first invalid record raises JobFileError. `exclude` takes the
    `duplicates` of a ValidationReport: those records are skipped and reported too; `keep`
    its `kept` columns, whose values each job then carries in their output types."""
    excluded = {problem.location: problem for problem in exclude}
    for location, outcome in iter_outcomes(path, kind, keep.spec if keep else None):
        if isinstance(outcome, Job) and location not in excluded:
            if keep is not None:
                outcome = dataclasses.replace(outcome, kept=keep.values(outcome.kept or {}))
            yield outcome
            continue
        problems = [excluded[location]] if isinstance(outcome, Job) else outcome
        if on_problem is not None:
            for problem in problems:
                on_problem(problem)
        if not skip_invalid:
            raise JobFileError(_summary(path, problems, len(problems)), problems)


@dataclass(slots=True)
class ValidationReport:
    """The outcome of validating a job input without sending anything.

    `jobs` counts the jobs a run would send (valid, first occurrence of their id); `problems`
    holds the first `max_problems` problems of `problem_count`; `duplicates` every repeated id
    (its later occurrence), which `read_jobs(exclude=...)` skips."""

    path: Path
    records: int
    jobs: int
    fingerprint: str
    problems: list[Problem] = field(default_factory=list)
    problem_count: int = 0
    duplicates: list[Problem] = field(default_factory=list)
    kept: KeptColumns | None = None
    invalid_records: int = 0  # records with a problem (a record may have several)

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def raise_for_problems(self) -> None:
        """Raise JobFileError listing the problems, if there are any."""
        if not self.ok:
            raise JobFileError(
                _summary(self.path, self.problems, self.problem_count), self.problems
            )


def _summary(path: Path, problems: list[Problem], count: int) -> str:
    first = str(problems[0]) if problems else "invalid"
    more = f" (and {count - 1} more problem{'s' if count > 2 else ''})" if count > 1 else ""
    return f"{path}: invalid job input: {first}{more}"


def validate_jobs(
    path: Path,
    kind: JobKind,
    *,
    max_problems: int = 100,
    keep: KeepSpec | None = None,
    interrupt_check: Callable[[], None] | None = None,
) -> ValidationReport:
    """Validate every record of `path`, including duplicate ids, in constant memory plus
    8 bytes per job; computes the input's fingerprint too, and with `keep` the kept
    columns' types (the report's `kept`). `interrupt_check` is called every few thousand
    records: what it raises stops the validation."""
    hashes = array("Q")
    problems: list[Problem] = []
    problem_count = records = invalid_records = 0
    types = ColumnTypes(keep) if keep is not None and keep.active else None
    for location, outcome in iter_outcomes(path, kind, keep if types else None):
        records += 1
        if interrupt_check is not None and records % _CHECK_EVERY == 0:
            interrupt_check()
        if isinstance(outcome, Job):
            hashes.append(id_hash(outcome.id))
            if types is not None and outcome.kept:
                types.observe(location, outcome.kept)
            continue
        problem_count += len(outcome)
        invalid_records += 1
        problems.extend(outcome[: max(0, max_problems - len(problems))])
    jobs = len(hashes)
    if interrupt_check is not None:
        interrupt_check()
    colliding = repeated_hashes(hashes)
    del hashes
    duplicates = _duplicate_ids(path, kind, colliding, interrupt_check) if colliding else []
    problems.extend(duplicates[: max(0, max_problems - len(problems))])
    return ValidationReport(
        path=path,
        records=records,
        jobs=jobs - len(duplicates),
        fingerprint=content_fingerprint(path, interrupt_check),
        problems=problems,
        problem_count=problem_count + len(duplicates),
        duplicates=duplicates,
        invalid_records=invalid_records + len(duplicates),
        kept=types.schema(path, strict=not problem_count) if types is not None else None,
    )


def _duplicate_ids(
    path: Path,
    kind: JobKind,
    colliding: set[int],
    interrupt_check: Callable[[], None] | None = None,
) -> list[Problem]:
    """Second pass: only jobs whose id hash collided are looked at; equal ids are problems
    at their later occurrence (hash collisions of different ids are not)."""
    first_seen: dict[str, SourceLocation] = {}
    duplicates: list[Problem] = []
    id_field = kind.source_fields().get("id", "id")
    for records, (location, outcome) in enumerate(iter_outcomes(path, kind), 1):
        if interrupt_check is not None and records % _CHECK_EVERY == 0:
            interrupt_check()
        if not isinstance(outcome, Job) or id_hash(outcome.id) not in colliding:
            continue
        first = first_seen.setdefault(outcome.id, location)
        if first is not location:
            duplicates.append(
                Problem(location, id_field, f"duplicate id '{outcome.id}' (first at {first})")
            )
    return duplicates
