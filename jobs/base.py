"""What a job is, and the interface every job kind gives the engine.

The engine in `batch/` knows jobs only through `JobKind`: it reads records, asks the kind to
turn each into a `Job`, packs jobs into `Batch`es (one API request each), sends them through
the kind, and writes the rows the kind returns. Adding a job kind touches `jobs/` only.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from batch.api_types import Usage

if TYPE_CHECKING:
    import pyarrow as pa

    from batch.cache.answers import CachedAnswer
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
    for embeddings, the text and model). `metadata` is carried to the output untouched, and
    so are `kept`, the values of the input columns kept by `--keep-columns`, which the
    readers attach (the kind never sees them).
    """

    id: str
    location: SourceLocation
    request: Mapping[str, Any]
    metadata: Any = None
    kept: Mapping[str, Any] | None = None


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
    usage_known: bool = True  # False: the API gave no readable usage; counted at the ceiling


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
    """The settings every kind reads; a kind with more declares a subclass as its
    `options_type` (defaults that job lines may override, column names)."""

    model: str | None = None
    id_column: str | None = None
    text_column: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class KindOption:
    """A command-line option a kind adds, described without Click: `--flag` sets the
    options' `field`. `choices` makes it a choice, `minimum` an integer range."""

    flag: str
    field: str
    help: str
    type: type[str] | type[int] | type[float] = str
    default: Any = None
    choices: tuple[str, ...] = ()
    minimum: int | None = None


@dataclass(frozen=True, slots=True)
class BilledInput:
    """One job's input as the API bills it, in terms `/tokens/count` can answer exactly:
    `model` counts `texts`, the bill adds `overhead`.

    `messages` is how many units were charged the per-message overhead (the estimate
    calibrates it on sampled answers). `session`, `message_keys` (one digest per message) and
    `message_texts` (their contents) let the estimate predict the prompt cache; `output_bound`
    is the most the answer can be billed (`default_bound` when a default, not the job, set
    it). `deduplicated`: the run answers a repeat of this text from its cache, unbilled."""

    model: str
    texts: tuple[str, ...]
    overhead: int
    messages: int = 0
    session: str | None = None
    message_keys: tuple[bytes, ...] = ()
    message_texts: tuple[str, ...] = ()
    output_bound: int = 0
    default_bound: bool = False
    deduplicated: bool = False


@dataclass(frozen=True, slots=True)
class AdmittedInput:
    """What a counted text is billed once the kind's input limit is applied: `tokens` to
    add (negative to take back an overhead already added for a text failed unsent), and
    whether the text was over the limit."""

    tokens: int
    over_limit: bool = False


class JobKind(abc.ABC):
    """A kind of job (chat, embeddings, ...), as the engine sees it. The engine never asks
    which kind it holds: whatever differs per kind is a method or attribute here."""

    name: ClassVar[str]
    # Other names `--kind` accepts for this kind.
    aliases: ClassVar[tuple[str, ...]] = ()
    # The kind's options dataclass, and the command-line options it adds beyond
    # KindOptions' own (--model, --id-column, --text-column).
    options_type: ClassVar[type[KindOptions]] = KindOptions
    cli_options: ClassVar[tuple[KindOption, ...]] = ()
    # The method name of this kind's requests in GigaChat's batch API (a batch-file line).
    batch_api_method: ClassVar[str]
    # Whether answers bill output tokens (chat) or not (embeddings): the estimate samples
    # answers only for kinds that have them, and reads the sampled rows' `model`,
    # `prompt_tokens`, `completion_tokens` and `precached_prompt_tokens` columns.
    has_output: ClassVar[bool] = True
    # What a line of this kind is, for `--kind`'s help.
    summary: ClassVar[str] = ""
    # Whether runs reuse answers from the answer cache unless told otherwise (--cache,
    # --no-cache): yes for deterministic answers (embeddings), no for sampled ones (chat).
    cached_by_default: ClassVar[bool] = False
    # Whether the kind keeps answers at all (`cache_material`, `cache_entry`, `cached_row`
    # defined): only then may the cache or the answer journal hold them.
    keeps_answers: ClassVar[bool] = False

    def __init__(self, options: KindOptions) -> None:
        self.options = options

    @abc.abstractmethod
    def job_from_record(self, record: Mapping[str, Any], location: SourceLocation) -> Job:
        """Validate and normalise one record; the id defaults to the location's number.
        Raises JobInvalid listing every problem."""

    @abc.abstractmethod
    def source_fields(self) -> Mapping[str, str]:
        """The fields a record may carry: canonical name (`id`, `text`, ...) -> the key or
        column it is read from (column mapping applied). Readers project Parquet onto these."""

    @abc.abstractmethod
    def answer_settings(self) -> Mapping[str, Any]:
        """The settings that change answers (model, defaults...), for the run's fingerprint."""

    def setting_hints(self) -> Mapping[str, str]:
        """For answer settings users change without meaning to: what to do when a resume
        is refused over one (`max_tokens` -> how the cap was set)."""
        return {}

    @abc.abstractmethod
    def packer(self) -> Packer:
        """A fresh packer for one run."""

    @abc.abstractmethod
    def reserve(self, batch: Batch) -> Usage:
        """A conservative upper bound on what sending `batch` can be billed (for budgets)."""

    def size_problems(self, job: Job) -> list[Problem]:
        """What makes `job`'s request certain to be refused by its length alone (over the
        model's context window or input limit, whatever the tokenizer): asked by validation
        for requests over `jobs.validation.TOKEN_CHECK_BYTES`. A kind that knows no token
        limits finds none."""
        return []

    def bounded(self) -> JobKind:
        """This kind with every request's billing bounded, so that `reserve` is a true
        ceiling; the engine runs a budgeted run with it. Chat caps answers by sending
        max_tokens (which changes answers, so it shows in `answer_settings`); a kind whose
        requests are bounded already returns itself."""
        return self

    @abc.abstractmethod
    def request_body(self, batch: Batch) -> dict[str, Any]:
        """The JSON body of the online request this kind sends for `batch`."""

    @abc.abstractmethod
    def outcomes(self, batch: Batch, body: Mapping[str, Any]) -> Sequence[JobOutcome]:
        """One outcome per job of `batch`, from a successful response body to
        `request_body(batch)`."""

    @abc.abstractmethod
    async def send(self, client: GigaChatClient, batch: Batch) -> Sequence[JobOutcome]:
        """Send one request for `batch`; one outcome per job. Raises ApiError when the request
        as a whole fails (the engine retries or fails every job in the batch)."""

    def received(self, batch: Batch) -> Sequence[JobOutcome]:
        """Outcomes of the jobs of `batch` that an earlier try already got (and was billed
        for) although the request as a whole then failed, e.g. half of a bisection. The
        engine writes them when the batch fails or the run stops, so an answer received is
        never paid for twice; a kind that sends one request per batch has none."""
        return ()

    @abc.abstractmethod
    def result_schema(self) -> pa.Schema:
        """The Arrow schema of results/ rows, including `id` (and `attempts`, `latency_ms`
        where the kind reports them)."""

    @abc.abstractmethod
    def billed_input(self, job: Job, *, message_overhead: int | None = None) -> BilledInput:
        """What `job` is billed as input; `message_overhead` replaces the kind's assumed
        per-message overhead (calibration), for kinds that charge one."""

    def admit_input(self, model: str, tokens: int) -> AdmittedInput:
        """What a text counted at `tokens` is billed after the kind's input-limit check
        (a kind without a limit bills the count)."""
        return AdmittedInput(tokens)

    def balance_usage(self, model: str) -> str:
        """The `usage` entry of /balance that `model`'s tokens draw on."""
        return model.split(":", 1)[0]

    def input_note(self, message_overhead: int | None = None) -> str | None:
        """What the estimate's input includes beyond /tokens/count, for its notes."""
        return None

    def over_limit_note(self, texts: int) -> str:
        """The estimate's note on `texts` counted over the input limit."""
        return f"{texts} texts exceed the model's input limit"

    def output_bound_note(self, rows_defaulted: int) -> str:
        """How rows without their own output bound were counted, for the estimate."""
        return ""

    def cache_material(self, job: Job) -> bytes | None:
        """Everything that determines `job`'s answer, as bytes (the engine hashes them into
        the answer cache's key); None when this kind's answers are never reused."""
        return None

    def cache_entry(self, outcome: JobResult) -> CachedAnswer | None:
        """`outcome`'s answer as the cache and the answer journal keep it, or None when
        this kind keeps no answers (then nothing is cached or journalled)."""
        return None

    def cached_row(self, job: Job, answer: CachedAnswer) -> JobResult:
        """`job` answered by a kept answer (`cache_entry`'s): the row as the answer first
        gave it, with the usage billed then (the engine bills a cache hit nothing)."""
        raise NotImplementedError(f"{self.name} keeps answers but does not define cached_row")

    def cached_columns(
        self, jobs: Sequence[Job], answers: Sequence[CachedAnswer]
    ) -> dict[str, pa.Array] | None:
        """The answer columns of many kept answers at once (those `cached_row` fills, not
        the engine's `id`, `attempts`, `latency_ms`), built without a Python object per
        value; None when this kind (or one of these answers) has no such path: the engine
        then builds the rows one by one with `cached_row`."""
        return None
