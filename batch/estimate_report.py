"""An estimate for people (a plain-text table) and for machines (`--json`).

Rendering only: the numbers come from batch/estimate_math.py. JSON values are rounded to what
they mean (whole tokens, costs to 1e-6 of a currency unit) so a float's binary noise
(`62.625600000000006`) never reaches a report.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

from batch.estimate_math import (
    CHARS_PER_TOKEN,
    BalanceReport,
    Calibration,
    Estimate,
    ModelEstimate,
    SampleReport,
    whole_tokens,
)
from batch.projection import Span

# Decimal places of money and of ratios in the JSON.
COST_DIGITS = 6
RATIO_DIGITS = 4


def _rub(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:,.4f}" if value < 1 else f"{value:,.2f}"


def _tokens(value: float | None) -> str:
    return "-" if value is None else whole_tokens(value)


def _row(name: str, n: int, inp: int, out: Span, cost: Span) -> list[str]:
    return [
        name,
        f"{n:,}",
        f"{inp:,}",
        _tokens(out.low),
        _tokens(out.expected),
        _tokens(out.high),
        _rub(cost.low),
        _rub(cost.expected),
        _rub(cost.high),
    ]


def _table(estimate: Estimate) -> list[str]:
    """One line per model (and a total when there are several), columns aligned."""
    input_label = "input tokens" if estimate.exact_input else "input tokens ~"
    currency = estimate.prices.currency
    header = ["model", "rows", input_label, "output low", "expected", "high"]
    header += [f"cost low {currency}", "expected", "high"]
    rows = [header]
    for m in estimate.models:
        rows.append(_row(m.model, m.rows, m.input_tokens, m.output_tokens, m.cost))
    if len(estimate.models) > 1:
        e = estimate
        rows.append(_row("total", e.rows, e.input_tokens, e.output_tokens, e.cost))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return [
        "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(r)
        ).rstrip()
        for r in rows
    ]


def _sample_lines(estimate: Estimate) -> list[str]:
    s = estimate.sample
    if s is None:
        return []
    currency = estimate.prices.currency
    out = [
        f"sample: {s.answered} of {s.requested} jobs answered ({s.failed} failed), "
        f"{s.completion_tokens:,} completion tokens, cost {_rub(s.cost)} {currency} "
        "(part of the estimate)"
    ]
    expected = estimate.cost.expected
    if s.out is not None and expected is not None:
        out.append(
            f"`gigabatch run` with --out {s.out} and the same settings skips the sampled "
            f"jobs: it pays the rest, about {_rub(max(0.0, expected - s.cost))} {currency}"
        )
    return out


def _balance_lines(estimate: Estimate) -> list[str]:
    b = estimate.balance
    if b is None:
        return []
    if b.entries is None:
        out = [f"balance: unavailable ({b.note})"]
    else:
        shown = ", ".join(f"{e.usage} {whole_tokens(e.value)} tokens" for e in b.entries)
        unchecked = f" (no entry for {', '.join(b.unchecked)}: not checked)" if b.unchecked else ""
        out = [f"balance: {shown or 'empty'}{unchecked}"]
    return out + [f"WARNING: {warning}" for warning in b.warnings]


def render_table(estimate: Estimate) -> str:
    """The estimate as a plain-text table with the method, prices, sample and balance."""
    out: list[str] = []
    if not estimate.exact_input:
        out.append(
            "OFFLINE APPROXIMATION: no requests were made; input tokens are characters / "
            f"{CHARS_PER_TOKEN} and may be off by 30% or more."
        )
    out.append(f"Estimate for {estimate.source} ({estimate.kind}, {estimate.rows:,} rows)")
    out.extend(_table(estimate))
    input_how = (
        "exact, from /tokens/count plus the overhead the API bills per message or text"
        if estimate.exact_input
        else f"approximate, characters / {CHARS_PER_TOKEN}"
    )
    out.append(f"input: {input_how}")
    out.append(f"output: {estimate.output_method}")
    p = estimate.prices
    out.append(f"prices: {p.currency} per 1M tokens, taken {p.taken} ({p.source})")
    out.extend(_sample_lines(estimate))
    if estimate.calibration is not None:
        out.append(f"calibration: {estimate.calibration.describe()}")
    if estimate.cacheable_tokens:
        out.append(
            f"prompt cache: {estimate.cacheable_tokens:,} input tokens repeat the previous "
            "request's prefix in the same session (a shared system prompt); low and expected "
            "costs assume the API serves them from its cache for free, the high cost does not"
        )
    out.extend(f"note: {note}" for note in estimate.notes)
    out.extend(_balance_lines(estimate))
    return "\n".join(out)


def _rounded(value: float | None, digits: int | None) -> float | int | None:
    """`value` rounded to `digits` places (None: to a whole number); None when unknown or
    infinite."""
    if value is None or math.isinf(value):
        return None
    return round(value) if digits is None else round(value, digits)


def _span_json(span: Span, digits: int | None) -> dict[str, float | int | None]:
    return {
        "low": _rounded(span.low, digits),
        "expected": _rounded(span.expected, digits),
        "high": _rounded(span.high, digits),
    }


class _Counted(Protocol):
    """What a model's estimate and the whole estimate both count."""

    @property
    def rows(self) -> int: ...
    @property
    def input_tokens(self) -> int: ...
    @property
    def cacheable_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> Span: ...
    @property
    def cost(self) -> Span: ...


def _counts_json(c: _Counted) -> dict[str, Any]:
    """The counts of a model's entry and of the total, in the same keys."""
    return {
        "rows": c.rows,
        "input_tokens": c.input_tokens,
        "cacheable_input_tokens": c.cacheable_tokens,
        "output_tokens": _span_json(c.output_tokens, None),
        "cost": _span_json(c.cost, COST_DIGITS),
    }


def _model_json(m: ModelEstimate) -> dict[str, Any]:
    return {
        "model": m.model,
        "kind": m.kind,
        **_counts_json(m),
        "price_per_million": _rounded(m.price_per_million, COST_DIGITS),
    }


def _sample_json(s: SampleReport) -> dict[str, Any]:
    return {
        "requested": s.requested,
        "answered": s.answered,
        "failed": s.failed,
        "completion_tokens": s.completion_tokens,
        "prompt_tokens": s.prompt_tokens,
        "cost": _rounded(s.cost, COST_DIGITS),
        "out": s.out,
        "confidence": s.confidence,
    }


def _calibration_json(c: Calibration) -> dict[str, Any]:
    return {
        "jobs": c.jobs,
        "messages": c.messages,
        "counted_tokens": c.counted,
        "billed_prompt_tokens": c.billed,
        "assumed_overhead": c.assumed,
        "measured_overhead": _rounded(c.measured, RATIO_DIGITS),
    }


def _balance_json(b: BalanceReport) -> dict[str, Any]:
    return {
        "available": b.entries is not None,
        "entries": (
            None if b.entries is None else [{"usage": e.usage, "value": e.value} for e in b.entries]
        ),
        "warnings": b.warnings,
        "unchecked": b.unchecked,
        "note": b.note,
    }


def estimate_to_json(estimate: Estimate) -> dict[str, Any]:
    """The estimate for machines (`--json`). Infinite or unknown values are null."""
    p = estimate.prices
    e = estimate
    return {
        "source": e.source,
        "kind": e.kind,
        "mode": "exact" if e.exact_input else "offline-approximation",
        "input_method": "tokens/count" if e.exact_input else f"characters/{CHARS_PER_TOKEN}",
        "output_method": e.output_method,
        "rows": e.rows,
        "models": [_model_json(m) for m in e.models],
        "total": _counts_json(e),
        "currency": p.currency,
        "prices": {"taken": p.taken, "source": p.source},
        "notes": e.notes,
        "cached_rows": e.cached_rows,
        "sample": None if e.sample is None else _sample_json(e.sample),
        "balance": None if e.balance is None else _balance_json(e.balance),
        "calibration": None if e.calibration is None else _calibration_json(e.calibration),
    }
