"""An estimate for people (a plain-text table) and for machines (`--json`).

Rendering only: the numbers come from batch/estimate.py. JSON values are rounded to what
they mean (whole tokens, costs to 1e-6 of a currency unit) so a float's binary noise
(`62.625600000000006`) never reaches a report.
"""

from __future__ import annotations

import math
from typing import Any

from batch.estimate import CHARS_PER_TOKEN, Estimate, Span, whole_tokens

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


def render_table(estimate: Estimate) -> str:
    """The estimate as a plain-text table with the method, prices, sample and balance."""
    input_label = "input tokens" if estimate.exact_input else "input tokens ~"
    header = [
        "model",
        "rows",
        input_label,
        "output low",
        "expected",
        "high",
        f"cost low {estimate.prices.currency}",
        "expected",
        "high",
    ]
    rows: list[list[str]] = [header]

    def line(name: str, n: int, inp: int, out: Span, cost: Span) -> list[str]:
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

    for m in estimate.models:
        rows.append(line(m.model, m.rows, m.input_tokens, m.output_tokens, m.cost))
    if len(estimate.models) > 1:
        rows.append(
            line(
                "total",
                estimate.rows,
                estimate.input_tokens,
                estimate.output_tokens,
                estimate.cost,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    table = [
        "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(r)
        ).rstrip()
        for r in rows
    ]
    out: list[str] = []
    if not estimate.exact_input:
        out.append(
            "OFFLINE APPROXIMATION: no requests were made; input tokens are characters / "
            f"{CHARS_PER_TOKEN} and may be off by 30% or more."
        )
    out.append(f"Estimate for {estimate.source} ({estimate.kind}, {estimate.rows:,} rows)")
    out.extend(table)
    input_how = (
        "exact, from /tokens/count plus the overhead the API bills per message or text"
        if estimate.exact_input
        else f"approximate, characters / {CHARS_PER_TOKEN}"
    )
    out.append(f"input: {input_how}")
    out.append(f"output: {estimate.output_method}")
    p = estimate.prices
    out.append(f"prices: {p.currency} per 1M tokens, taken {p.taken} ({p.source})")
    if estimate.sample is not None:
        s = estimate.sample
        out.append(
            f"sample: {s.answered} of {s.requested} jobs answered ({s.failed} failed), "
            f"{s.completion_tokens:,} completion tokens, cost {_rub(s.cost)} {p.currency} "
            "(part of the estimate)"
        )
        expected = estimate.cost.expected
        if s.out is not None and expected is not None:
            out.append(
                f"`gigabatch run` with --out {s.out} and the same settings skips the sampled "
                f"jobs: it pays the rest, about {_rub(max(0.0, expected - s.cost))} {p.currency}"
            )
    if estimate.calibration is not None:
        out.append(f"calibration: {estimate.calibration.describe()}")
    if estimate.cacheable_tokens:
        out.append(
            f"prompt cache: {estimate.cacheable_tokens:,} input tokens repeat the previous "
            "request's prefix in the same session (a shared system prompt); low and expected "
            "costs assume the API serves them from its cache for free, the high cost does not"
        )
    for note in estimate.notes:
        out.append(f"note: {note}")
    if estimate.balance is not None:
        b = estimate.balance
        if b.entries is None:
            out.append(f"balance: unavailable ({b.note})")
        else:
            shown = ", ".join(f"{e.usage} {whole_tokens(e.value)} tokens" for e in b.entries)
            unchecked = (
                f" (no entry for {', '.join(b.unchecked)}: not checked)" if b.unchecked else ""
            )
            out.append(f"balance: {shown or 'empty'}{unchecked}")
        for warning in b.warnings:
            out.append(f"WARNING: {warning}")
    return "\n".join(out)


def _rounded(value: float | None, digits: int | None) -> float | int | None:
    """`value` rounded to `digits` places (None: to a whole number); None when unknown or
    infinite."""
    if value is None or math.isinf(value):
        return None
    return round(value) if digits is None else round(value, digits)


def _tokens_json(span: Span) -> dict[str, float | int | None]:
    return {
        "low": _rounded(span.low, None),
        "expected": _rounded(span.expected, None),
        "high": _rounded(span.high, None),
    }


def _cost_json(span: Span) -> dict[str, float | int | None]:
    return {
        "low": _rounded(span.low, COST_DIGITS),
        "expected": _rounded(span.expected, COST_DIGITS),
        "high": _rounded(span.high, COST_DIGITS),
    }


def estimate_to_json(estimate: Estimate) -> dict[str, Any]:
    """The estimate for machines (`--json`). Infinite or unknown values are null."""
    p = estimate.prices
    data: dict[str, Any] = {
        "source": estimate.source,
        "kind": estimate.kind,
        "mode": "exact" if estimate.exact_input else "offline-approximation",
        "input_method": (
            "tokens/count" if estimate.exact_input else f"characters/{CHARS_PER_TOKEN}"
        ),
        "output_method": estimate.output_method,
        "rows": estimate.rows,
        "models": [
            {
                "model": m.model,
                "kind": m.kind,
                "rows": m.rows,
                "input_tokens": m.input_tokens,
                "cacheable_input_tokens": m.cacheable_tokens,
                "output_tokens": _tokens_json(m.output_tokens),
                "cost": _cost_json(m.cost),
                "price_per_million": _rounded(m.price_per_million, COST_DIGITS),
            }
            for m in estimate.models
        ],
        "total": {
            "rows": estimate.rows,
            "input_tokens": estimate.input_tokens,
            "cacheable_input_tokens": estimate.cacheable_tokens,
            "output_tokens": _tokens_json(estimate.output_tokens),
            "cost": _cost_json(estimate.cost),
        },
        "currency": p.currency,
        "prices": {"taken": p.taken, "source": p.source},
        "notes": estimate.notes,
        "sample": None,
        "balance": None,
        "calibration": None,
    }
    if estimate.sample is not None:
        s = estimate.sample
        data["sample"] = {
            "requested": s.requested,
            "answered": s.answered,
            "failed": s.failed,
            "completion_tokens": s.completion_tokens,
            "prompt_tokens": s.prompt_tokens,
            "cost": _rounded(s.cost, COST_DIGITS),
            "out": s.out,
            "confidence": s.confidence,
        }
    if estimate.calibration is not None:
        c = estimate.calibration
        data["calibration"] = {
            "jobs": c.jobs,
            "messages": c.messages,
            "counted_tokens": c.counted,
            "billed_prompt_tokens": c.billed,
            "assumed_overhead": c.assumed,
            "measured_overhead": _rounded(c.measured, RATIO_DIGITS),
        }
    if estimate.balance is not None:
        b = estimate.balance
        data["balance"] = {
            "available": b.entries is not None,
            "entries": (
                None
                if b.entries is None
                else [{"usage": e.usage, "value": e.value} for e in b.entries]
            ),
            "warnings": b.warnings,
            "unchecked": b.unchecked,
            "note": b.note,
        }
    return data
