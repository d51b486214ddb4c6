"""Batch files for GigaChat's batch API, built from a job stream: the kind's packer groups jobs
into requests as online, each request becomes one task line (`kind.request_body`), and
lines are gathered into files of at most `max_lines` lines and `max_bytes` bytes.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from batch import batches_wire
from batch.errors import RunRefused
from jobs.base import Batch, Job, JobKind


@dataclass(slots=True)
class BatchFile:
    """One file to upload: its JSONL bytes and the request (`Batch`) behind each task id."""

    method: str
    lines: bytearray = field(default_factory=bytearray)
    tasks: dict[str, Batch] = field(default_factory=dict)
    # Task ids are `<nonce>-<n>`: unique in the file, and no other file's lines match them.
    nonce: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def next_task_id(self) -> str:
        return f"{self.nonce}-{len(self.tasks) + 1}"

    def job_ids(self) -> dict[str, list[str]]:
        return {task_id: [job.id for job in b.jobs] for task_id, b in self.tasks.items()}


class FileBuilder:
    """Gathers task lines into files; a line alone over `max_bytes` still gets a file."""

    def __init__(self, kind: JobKind, max_lines: int, max_bytes: int) -> None:
        if max_lines < 1 or max_bytes < 1:
            raise ValueError("a batch file needs room for at least one line")
        self.kind = kind
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self._file = BatchFile(kind.batch_api_method)

    def add(self, batch: Batch) -> list[BatchFile]:
        """Add one request; the files that became full."""
        body = self.kind.request_body(batch)
        line = batches_wire.task_line(self._file.next_task_id(), body)
        closed = []
        if self._file.tasks and len(self._file.lines) + len(line) > self.max_bytes:
            closed.append(self._close())
            line = batches_wire.task_line(self._file.next_task_id(), body)
        task_id = self._file.next_task_id()
        self._file.lines += line
        self._file.tasks[task_id] = batch
        if len(self._file.tasks) >= self.max_lines:
            closed.append(self._close())
        return closed

    def flush(self) -> BatchFile | None:
        return self._close() if self._file.tasks else None

    def _close(self) -> BatchFile:
        closed, self._file = self._file, BatchFile(self.kind.batch_api_method)
        return closed


class FileSource:
    """Batch files from a job stream, skipping the jobs `skip` names (done, or in a recorded
    batch). `next_file` reads the file (blocking): call it from a worker thread."""

    def __init__(
        self,
        jobs: Iterator[Job],
        kind: JobKind,
        skip: Callable[[Job], bool],
        *,
        max_lines: int,
        max_bytes: int,
    ) -> None:
        self._jobs = jobs
        self._skip = skip
        self._packer = kind.packer()
        self._builder = FileBuilder(kind, max_lines, max_bytes)
        self._ready: deque[BatchFile] = deque()
        self._ended = False
        self.skipped = 0

    def next_file(self) -> BatchFile | None:
        """The next full file, the last partial one at the end, then None."""
        while not self._ready and not self._ended:
            job = next(self._jobs, None)
            if job is None:
                self._ended = True
                self._take(self._packer.flush())
                last = self._builder.flush()
                if last is not None:
                    self._ready.append(last)
            elif self._skip(job):
                self.skipped += 1
            else:
                self._take(self._packer.add(job))
        return self._ready.popleft() if self._ready else None

    def _take(self, batches: list[Batch]) -> None:
        for batch in batches:
            self._ready.extend(self._builder.add(batch))


def repack(kind: JobKind, jobs: list[Job]) -> Batch:
    """The one request `jobs` (one task's, in order) were packed into: a fresh packer given
    the same jobs packs them the same way, which rebuilds a task on resume."""
    packer = kind.packer()
    batches = [b for job in jobs for b in packer.add(job)] + packer.flush()
    if len(batches) != 1:
        raise RunRefused(
            f"the {len(jobs)} jobs of a recorded batch task no longer pack into one request; "
            "the job kind's packing changed (use --restart)"
        )
    return batches[0]
