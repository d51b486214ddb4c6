"""OUT/invalid.jsonl: with --skip-invalid, one line per skipped record, saying where it was
and what was wrong ({file, line|row, field, message}). Each run rewrites it, since each run
reads the whole input again."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import IO

import orjson

from batch.layout import INVALID
from batch.storage import output_errors
from jobs.base import Problem

OnProblem = Callable[[Problem], None]


@contextlib.contextmanager
def invalid_log(out_dir: Path, on_logged: OnProblem) -> Iterator[OnProblem]:
    """Open OUT/invalid.jsonl for the run; the yielded function logs one problem (and
    passes it to `on_logged`, for the run's count)."""
    with output_errors("write"):
        handle = (out_dir / INVALID).open("wb")
    with handle:
        yield partial(_log_problem, handle, on_logged)


def _log_problem(handle: IO[bytes], on_logged: OnProblem, problem: Problem) -> None:
    on_logged(problem)
    loc = problem.location
    record = {
        "file": loc.file,
        loc.unit: loc.number,
        "field": problem.field,
        "message": problem.message,
    }
    handle.write(orjson.dumps(record) + b"\n")
