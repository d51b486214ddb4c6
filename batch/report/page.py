"""The report's HTML: one self-contained page with the figures at the top, the plot data as
JSON, and uPlot and the drawing script inlined, so the file opens offline."""

from __future__ import annotations

import html
from importlib import resources
from typing import Any

import orjson

# The plots, in page order: the element id, a title, the y unit, the series from
# `series.*` (key, label, and how to draw them), an optional right-hand unit.
CHARTS: list[dict[str, Any]] = [
    {
        "id": "plot-throughput",
        "title": "Throughput",
        "unit": "per second",
        "series": [
            {"key": "jobs_per_s", "label": "jobs answered / s"},
            {"key": "requests_per_s", "label": "requests / s", "dash": True},
        ],
    },
    {
        "id": "plot-concurrency",
        "title": "In flight and the limiter's level (429s as bars, pauses shaded)",
        "unit": "requests",
        "right": "429s",
        "series": [
            {"key": "in_flight", "label": "in flight (mean)"},
            {"key": "limit", "label": "limiter level", "stepped": True},
            {
                "key": "rate_limited",
                "label": "429s",
                "bars": True,
                "scale": "right",
                "color": "rgba(214, 39, 40, 0.6)",
            },
        ],
    },
    {
        "id": "plot-latency",
        "title": "Latency of answered attempts",
        "unit": "ms",
        "series": [
            {"key": "p50_ms", "label": "p50"},
            {"key": "p90_ms", "label": "p90"},
            {"key": "p99_ms", "label": "p99"},
        ],
    },
    {
        "id": "plot-tokens",
        "title": "Tokens billed (cumulative)",
        "unit": "tokens",
        "series": [
            {"key": "prompt_tokens", "label": "prompt"},
            {"key": "completion_tokens", "label": "completion"},
            {"key": "precached_tokens", "label": "precached (free)", "dash": True},
        ],
    },
    {
        "id": "plot-spend",
        "title": "Spend against the budget (cumulative)",
        "unit": "RUB",
        "series": [
            {"key": "cost", "label": "spent"},
            {"key": "budget", "label": "--max-cost", "dash": True, "color": "#d62728"},
        ],
    },
]

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px auto; max-width: 1000px; color: #222; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 16px; margin: 28px 0 6px; }
.status { color: #555; margin-top: 0; }
.figures { display: grid; grid-template-columns: repeat(4, 1fr); gap: 8px; }
.figure { background: #f4f6f8; border-radius: 6px; padding: 8px 10px; }
.figure b { display: block; font-size: 18px; } .figure span { color: #666; font-size: 12px; }
.legs { border-collapse: collapse; margin-top: 8px; } .legs td, .legs th { padding: 2px 10px; }
.legs th { text-align: left; color: #666; font-weight: normal; }
.plot { min-height: 40px; }
.bar-row { display: flex; align-items: center; gap: 8px; margin: 3px 0; }
.bar-label { width: 180px; } .bar { background: #d62728; height: 14px; display: inline-block; }
.bar-value { color: #555; } .none { color: #666; }
#errors { color: #b00; white-space: pre-wrap; }
"""


def _asset(name: str) -> str:
    return resources.files("batch.report").joinpath("assets").joinpath(name).read_text("utf-8")


def _script_json(value: Any) -> str:
    # "</" would end the <script> element early; JSON allows "<\\/" for it.
    return orjson.dumps(value).decode("utf-8").replace("</", "<\\/")


def _figures(figures: list[tuple[str, str]]) -> str:
    return "".join(
        f'<div class="figure"><b>{html.escape(value)}</b><span>{html.escape(name)}</span></div>'
        for name, value in figures
    )


def _legs_table(legs: list[dict[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td>{leg['number']}</td><td>{html.escape(leg['started'])}</td>"
        f"<td>{leg['seconds']:.1f} s</td><td>{'killed' if leg['killed'] else 'ended'}</td></tr>"
        for leg in legs
    )
    head = "<tr><th>leg</th><th>started</th><th>lasted</th><th>how it ended</th></tr>"
    return f'<table class="legs">{head}{rows}</table>'


def render(
    *,
    title: str,
    status: str,
    figures: list[tuple[str, str]],
    legs: list[dict[str, Any]],
    data: dict[str, Any],
) -> str:
    """The whole page. `data` holds `times`, `series`, `pauses`, `legs`, `failed_attempts`
    and `failed_rows`; the chart list is added here."""
    payload = dict(data, charts=CHARTS)
    plots = "".join(
        f'<h2>{html.escape(c["title"])}</h2><div class="plot" id="{c["id"]}"></div>'
        for c in CHARTS
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>{_asset("uPlot.min.css")}</style><style>{_STYLE}</style>
</head><body data-rendered="pending">
<h1>{html.escape(title)}</h1><p class="status">{html.escape(status)}</p>
<div class="figures">{_figures(figures)}</div>
{_legs_table(legs)}
<div id="errors"></div>
{plots}
<h2>Failed attempts by class</h2><div class="plot" id="plot-failed-attempts"></div>
<h2>Failed rows by class (failed/)</h2><div class="plot" id="plot-failed-rows"></div>
<script type="application/json" id="report-data">{_script_json(payload)}</script>
<script>{_asset("uPlot.iife.min.js")}</script>
<script>{_asset("report.js")}</script>
</body></html>
"""
