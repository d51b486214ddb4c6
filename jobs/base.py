"""What a job is, and the interface every job kind gives the engine.

The engine in `batch/` knows jobs only through `JobKind`: it reads records, asks the kind to
turn each into a `Job`, packs jobs into `Batch`es (one API request each), sends them through
the kind, and writes the rows the kind returns. Adding a job kind touches `jobs/` only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from batch.api_types import Usage

if TYPE_CHECKING:
    import pyarrow as pa

    from batch.client import GigaChatClient


@dataclass(frozen=True, slots=True)
class SourceLocation:
    """Where a record came from: a JSONL line or a Parquet row, both counted from 1."""

    file: str
    number: int
    unit: Literal["line", "row"] = "line"

    def __str__(self) -> str:
        return f"{self.file} {self.unit} {self.number}"


@dataclass(frozen=True, slots=True)
class Problem:
    """One validation problem: where, which field, what is wrong."""

    location: SourceLocation
    field: str | None
    message: str

    def __str__(self) -> str:
        where = str(self.location)
        if self.field:
            where += f", field '{self.field}'"
        return f"{where}: {self.message}"


class JobInvalid(Exception):
    """Raised by `JobKind.job_from_record` with every problem the record has."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Job:
    """One unit of work: answered once, written as exactly one row in results/ or failed/.

    `request` is the kind's normalised form of the record (for chat, the request body;
    for embeddings, the text and model). `metadata` is carried to the output untouched.
    """

    id: str
    location: SourceLocation
    request: Mapping[str, Any]
    metadata: Any = None


@dataclass(slots=True)
class Batch:
    """The jobs one API request answers (one for chat, many for embeddings)."""

    jobs: list[Job]
    payload: Any = None


@dataclass(frozen=True, slots=True)
class JobResult:
    """A job answered: `row` has the kind's result columns except `id`, `attempts` and
    `latency_ms`, which the engine fills."""

    job: Job
    row: dict[str, Any]
    usage: Usage
    model: str


@dataclass(frozen=True, slots=True)
class JobFailure:
    """A job that failed on its own (not its request): for example a text over the limit."""

    job: Job
    error_class: str
    message: str
    status: int | None = None
    request_id: str | None = None


JobOutcome = JobResult | JobFailure


class Packer(Protocol):
    """Groups jobs into batches. `add` returns the batches that became full; `flush` the rest."""

    def add(self, job: Job) -> list[Batch]: ...

    def flush(self) -> list[Batch]: ...


@dataclass(frozen=True, slots=True)
class KindOptions:
    """The command-line settings a kind reads (defaults that job lines may override)."""

    model: str | None = None
    system: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    repetition_penalty: float | None = None
    batch_size: int = 64
    max_batch_chars: int = 200_000
    on_long_text: Literal["fail", "truncate"] = "fail"
    id_column: str | None = None
    text_column: str | None = None
    prompt_column: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


class JobKind(Protocol):
    """A kind of job (chat, embeddings, ...), as the engine sees it."""

    name: ClassVar[str]
    # The `method` of GigaChat's batch API that answers this kind's requests.
    batch_api_method: ClassVar[str]

    def job_from_record(self, record: Mapping[str, Any], location: SourceLocation) -> Job:
        """Validate and normalise one record; the id defaults to the location's number.
        Raises JobInvalid listing every problem."""
        ...

    def source_fields(self) -> Mapping[str, str]:
        """The fields a record may carry: canonical name (`id`, `text`, ...) -> the key or
        column it is read from (column mapping applied). Readers project Parquet onto these."""
        ...

    def answer_settings(self) -> Mapping[str, Any]:
        """The settings that change answers (model, defaults...), for the run's fingerprint."""
        ...

    def packer(self) -> Packer:
        """A fresh packer for one run."""
        ...

    def reserve(self, batch: Batch) -> Usage:
        """A conservative upper bound on what sending `batch` can be billed (for budgets)."""
        ...

    def bounded(self) -> JobKind:
        """This kind with every request's billing bounded, so that `reserve` is a true
        ceiling; the engine runs a budgeted run with it. Chat caps answers by sending
        max_tokens (which changes answers, so it shows in `answer_settings`); a kind whose
        requests are bounded already returns itself."""
        ...

    async def send(self, client: GigaChatClient, batch: Batch) -> Sequence[JobOutcome]:
        """Send one request for `batch`; one outcome per job. Raises ApiError when the request
        as a whole fails (the engine retries or fails every job in the batch)."""
        ...

    def request_body(self, batch: Batch) -> dict[str, Any]:
        """The JSON body of the one online request that answers `batch` (also the `request`
        of a batch-API task line)."""
        ...

    def outcomes(self, batch: Batch, body: Mapping[str, Any]) -> Sequence[JobOutcome]:
        """One outcome per job of `batch` from the decoded body of a successful answer to
        `request_body(batch)`. Raises ApiError when the body cannot be read."""
        ...

    def result_schema(self) -> pa.Schema:
        """The Arrow schema of results/ rows, including `id` (and `attempts`, `latency_ms`
        where the kind reports them)."""
        ...
