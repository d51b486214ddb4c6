"""What a job file will cost, before it runs: the pure arithmetic behind `gigabatch estimate`.

Input tokens are tallied per model (exactly, from `/tokens/count`, or approximately from
characters offline); output tokens are bounded by `max_tokens`, or projected from a random
sample of jobs answered for real, with a confidence interval; both are priced by the
`PriceTable`. No I/O here: batch/estimator.py feeds these functions and
batch/estimate_report.py renders what they return.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from batch.api_types import BalanceEntry
from batch.pricing import PriceTable
from batch.projection import Span, project_total

# Russian and English text run at 3-4 characters per token (Sber's documentation); offline
# estimates use the middle of that range and say so.
CHARS_PER_TOKEN = 3.5

# What one /tokens/count call carries: many texts, a bounded request body.
COUNT_BATCH_TEXTS = 100
COUNT_BATCH_CHARS = 200_000


def approximate_tokens(text: str) -> int:
    """Offline stand-in for /tokens/count: characters / CHARS_PER_TOKEN, rounded up."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


@dataclass(slots=True)
class ModelTally:
    """Running totals for the jobs of one model."""

    model: str
    kind: str
    has_output: bool = True
    rows: int = 0
    input_tokens: int = 0
    # Input tokens that repeat the prefix of the previous request in the same session (a
    # shared system prompt): the API's prompt cache serves them free while it stays warm.
    cacheable_tokens: int = 0
    # Chat messages sent, and those in a cacheable prefix: each is billed a per-message
    # overhead, which a calibration on sampled answers may correct.
    messages: int = 0
    cached_messages: int = 0
    # Sum over rows of each answer's maximum length: max_tokens where the job sets it, the
    # stated default elsewhere (`rows_default_bound` counts those rows).
    output_bound: int = 0
    rows_default_bound: int = 0


@dataclass(slots=True)
class Tally:
    """Per-model totals for one job file of one kind; rows of a kind with output (chat) add
    an output bound, those of a kind without (embeddings) none."""

    kind: str
    has_output: bool = True
    models: dict[str, ModelTally] = field(default_factory=dict)

    def model(self, name: str) -> ModelTally:
        tally = self.models.get(name)
        if tally is None:
            tally = self.models[name] = ModelTally(name, self.kind, self.has_output)
        return tally

    def add_row(
        self,
        model: str,
        *,
        output_bound: int = 0,
        default_bound: bool = False,
        messages: int = 0,
        cached_messages: int = 0,
    ) -> None:
        tally = self.model(model)
        tally.rows += 1
        tally.output_bound += output_bound
        tally.rows_default_bound += int(default_bound)
        tally.messages += messages
        tally.cached_messages += cached_messages

    def add_input(self, model: str, tokens: int, *, cacheable: int = 0) -> None:
        tally = self.model(model)
        tally.input_tokens += tokens
        tally.cacheable_tokens += cacheable

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.models.values())

    def recalibrate(self, calibration: Calibration) -> None:
        """Replace the assumed per-message overhead by the one measured on sampled answers."""
        delta = calibration.measured - calibration.assumed
        for tally in self.models.values():
            tally.input_tokens += round(delta * tally.messages)
            tally.cacheable_tokens += round(delta * tally.cached_messages)


@dataclass(frozen=True, slots=True)
class Calibration:
    """The per-message overhead measured on the sampled jobs: what the API billed for their
    prompts (cached tokens included) against what /tokens/count counted for their texts."""

    jobs: int
    messages: int
    counted: int
    billed: int
    assumed: int

    @property
    def measured(self) -> float:
        return (self.billed - self.counted) / self.messages if self.messages else self.assumed

    @property
    def matches(self) -> bool:
        """True when the assumed overhead predicted the sample's bill to the token."""
        return self.counted + self.assumed * self.messages == self.billed

    def describe(self) -> str:
        per = f"{self.measured:.2f} tokens per message beyond /tokens/count"
        if self.matches:
            return f"the {self.jobs} sampled jobs were billed {per}, as assumed"
        return (
            f"the {self.jobs} sampled jobs were billed {per} (assumed {self.assumed}): "
            "input corrected accordingly"
        )


@dataclass(frozen=True, slots=True)
class ModelEstimate:
    model: str
    kind: str
    rows: int
    input_tokens: int
    output_tokens: Span
    cost: Span
    price_per_million: float
    cacheable_tokens: int = 0

    @property
    def billed_tokens(self) -> Span:
        return billed_input(self.input_tokens, self.cacheable_tokens) + self.output_tokens


def billed_input(input_tokens: int, cacheable_tokens: int) -> Span:
    """Input tokens billed: without the cacheable prefix at the low and expected ends (a run
    keeps the prompt cache warm: it sends to each session many times a minute), all of them
    at the high end (the cache is the API's to keep, not a promise)."""
    warm = float(input_tokens - cacheable_tokens)
    return Span(warm, warm, float(input_tokens))


@dataclass(frozen=True, slots=True)
class SampleReport:
    """The jobs answered for real to project output lengths."""

    requested: int
    answered: int
    failed: int
    completion_tokens: int
    prompt_tokens: int
    cost: float
    out: str | None  # where the answers are checkpointed; None when they were discarded
    confidence: float


@dataclass(frozen=True, slots=True)
class BalanceReport:
    """The prepaid balance next to the estimate; `entries` is None when /balance gave none
    (a 403: not a prepaid account) and `note` says why."""

    entries: list[BalanceEntry] | None
    warnings: list[str]
    note: str | None = None
    unchecked: list[str] = field(default_factory=list)  # usages the balance has no entry for


@dataclass(frozen=True, slots=True)
class Estimate:
    source: str
    kind: str
    exact_input: bool
    models: list[ModelEstimate]
    output_method: str
    prices: PriceTable
    notes: list[str] = field(default_factory=list)
    sample: SampleReport | None = None
    balance: BalanceReport | None = None
    calibration: Calibration | None = None
    # Jobs the answer cache answers already: not in `models`, priced at nothing.
    cached_rows: int = 0

    @property
    def rows(self) -> int:
        return sum(m.rows for m in self.models)

    @property
    def input_tokens(self) -> int:
        return sum(m.input_tokens for m in self.models)

    @property
    def cacheable_tokens(self) -> int:
        return sum(m.cacheable_tokens for m in self.models)

    @property
    def output_tokens(self) -> Span:
        return sum((m.output_tokens for m in self.models), Span(0, 0, 0))

    @property
    def cost(self) -> Span:
        return sum((m.cost for m in self.models), Span(0, 0, 0))


def output_span(
    tally: ModelTally,
    sample: Sequence[int] | None,
    *,
    confidence: float,
) -> Span:
    """Output tokens of one model's rows: 0 for a kind without output; without a sample, between 0
    and the max_tokens bound with no expected value; with one, the projection."""
    if not tally.has_output:
        return Span(0, 0, 0)
    if not sample:
        return Span(0, None, tally.output_bound)
    # The bound is a hard limit only when every row set max_tokens itself.
    bound = float(tally.output_bound) if tally.rows_default_bound == 0 else None
    span = project_total(sample, tally.rows, confidence=confidence, bound=bound)
    if math.isinf(span.high):  # one sampled answer says nothing about spread
        assert span.expected is not None
        return Span(span.low, span.expected, max(span.expected, float(tally.output_bound)))
    return span


def build_estimate(
    tally: Tally,
    prices: PriceTable,
    *,
    source: str,
    exact_input: bool,
    output_method: str,
    samples: Mapping[str, Sequence[int]] | None = None,
    confidence: float = 0.95,
    notes: Sequence[str] = (),
    sample_report: SampleReport | None = None,
) -> Estimate:
    """Price a tally. `samples` maps a model to the completion tokens of its sampled rows;
    a model without sampled rows keeps the max_tokens bound."""
    models: list[ModelEstimate] = []
    all_notes = list(notes)
    for name in sorted(tally.models):
        model = tally.models[name]
        sample = (samples or {}).get(name)
        output = output_span(model, sample, confidence=confidence)
        pooled = [tokens for values in (samples or {}).values() for tokens in values]
        if samples is not None and not sample and model.has_output and pooled:
            # A model the sample missed (a rare one): its expected length is taken from the
            # other models' answers, its interval stays the honest 0..bound.
            guess = min(statistics.fmean(pooled) * model.rows, float(model.output_bound))
            output = Span(output.low, guess, output.high)
            all_notes.append(
                f"no sampled answer for {name}: its expected output uses the mean answer "
                "length of the other models' sampled jobs, its interval is 0 to the bound"
            )
        price = prices.price_per_million(name)
        billed = billed_input(model.input_tokens, model.cacheable_tokens) + output
        cost = billed.scaled(price / 1_000_000)
        models.append(
            ModelEstimate(
                name,
                model.kind,
                model.rows,
                model.input_tokens,
                output,
                cost,
                price,
                model.cacheable_tokens,
            )
        )
    return Estimate(
        source=source,
        kind=tally.kind,
        exact_input=exact_input,
        models=models,
        output_method=output_method,
        prices=prices,
        notes=all_notes,
        sample=sample_report,
    )


def check_balance(
    estimate: Estimate, entries: Sequence[BalanceEntry], usage_of: Callable[[str], str]
) -> BalanceReport:
    """Compare the estimate's billed tokens with the prepaid balance (counted in tokens, per
    usage; `usage_of` names the usage a model draws on, the kind's `balance_usage`): warn
    when the expected tokens, or failing that the high end, exceed what is left."""
    left = {e.usage.lower(): e.value for e in entries}
    needed: dict[str, Span] = {}
    for m in estimate.models:
        usage = usage_of(m.model)
        needed[usage] = needed.get(usage, Span(0, 0, 0)) + m.billed_tokens
    warnings: list[str] = []
    unchecked: list[str] = []
    for usage, tokens in needed.items():
        available = left.get(usage.lower())
        if available is None:
            unchecked.append(usage)
        elif tokens.expected is not None and tokens.expected > available:
            warnings.append(
                f"the estimate for {usage} ({whole_tokens(tokens.expected)} tokens expected) "
                f"exceeds the balance ({whole_tokens(available)} tokens)"
            )
        elif tokens.high > available:
            what = "at the high end" if tokens.expected is not None else "at the max_tokens bound"
            warnings.append(
                f"the estimate for {usage} {what} ({whole_tokens(tokens.high)} tokens) exceeds the "
                f"balance ({whole_tokens(available)} tokens)"
            )
    return BalanceReport(list(entries), warnings, unchecked=unchecked)


def whole_tokens(value: float) -> str:
    """A token count for people: whole, with thousands separators, `inf` when unbounded."""
    return "inf" if math.isinf(value) else f"{round(value):,}"
