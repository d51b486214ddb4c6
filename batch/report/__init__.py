"""`gigabatch report DIR`: one self-contained HTML page of what a run did, from its event
log (`events.bin`), its last summary (`summary.json`) and its failed rows (`failed/`).

The data behind each plot comes from the pure functions of `batch.report.series`; this
module only reads the directory and writes `DIR/report.html`.
"""

from __future__ import annotations

import datetime
import tempfile
from pathlib import Path
from typing import Any

import orjson

from batch.errors import ReportError
from batch.eventlog import ATTEMPT, EVENTS, Event, read_events
from batch.failures import failure_classes
from batch.layout import SUMMARY
from batch.output_uri import open_output_uri
from batch.part_store import ObjectParts, PartStore
from batch.report import series
from batch.report.page import render

REPORT = "report.html"


def write_report(out_dir: Path, *, store: PartStore | None = None) -> Path:
    """Write `out_dir/report.html` and return its path. Raises ReportError when the
    directory holds no run (no event log and no summary). With an output URI's `store`,
    `out_dir` holds copies of its event log and summary, the failed rows are read from
    the store, and the page is copied there too."""
    where = store.where() if store is not None else str(out_dir)
    events = read_events(out_dir)
    summary = _read_summary(out_dir)
    if not events and summary is None:
        raise ReportError(
            f"{where}: no {EVENTS} or {SUMMARY} here; "
            "give the --out directory of a run (made by gigabatch run)"
        )
    failed = _failed_rows(store if store is not None else out_dir)
    page = build_page(events, summary, failed, title=f"gigabatch run: {where}")
    path = out_dir / REPORT
    tmp = path.with_name("." + REPORT)
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    if store is not None:
        store.publish(out_dir, REPORT)
    return path


def write_uri_report(uri: str) -> str:
    """Write URI/report.html from the run files at the output URI; return where it is."""
    store = ObjectParts(open_output_uri(uri, probe=False))
    with tempfile.TemporaryDirectory(prefix="gigabatch-report-") as tmp:
        for name in (EVENTS, SUMMARY):
            store.fetch(name, Path(tmp))
        write_report(Path(tmp), store=store)
    return store.where(REPORT)


def build_page(
    events: list[Event],
    summary: dict[str, Any] | None,
    failed_rows: dict[str, int],
    *,
    title: str,
) -> str:
    """The report page of these events and summary (pure: no I/O)."""
    legs = series.legs(events)
    g = series.grid(legs)
    data: dict[str, Any] = {
        "times": g.times,
        "series": {
            **series.throughput(events, g),
            **series.concurrency(events, g),
            **series.latency(events, g),
            **series.spend(events, g, legs),
        },
        "pauses": series.pauses(events),
        "legs": [{"number": leg.number, "start": leg.start, "killed": leg.killed} for leg in legs],
        "failed_attempts": series.failures_by_class(events),
        "failed_rows": failed_rows,
    }
    return render(
        title=title,
        status=_status_line(summary, legs),
        figures=figures(summary, events, legs),
        legs=[
            {
                "number": leg.number,
                "started": _clock(leg.start),
                "seconds": leg.end - leg.start,
                "killed": leg.killed,
            }
            for leg in legs
        ],
        data=data,
    )


def figures(
    summary: dict[str, Any] | None, events: list[Event], legs: list[series.Leg]
) -> list[tuple[str, str]]:
    """The figures at the top of the page: the last summary's, then the log's."""
    out: list[tuple[str, str]] = []
    if summary is not None:
        jobs = summary["jobs"]
        cost = summary["cost"]
        conc = summary["concurrency"]
        out += [
            ("jobs succeeded", f"{jobs['succeeded']:,} of {jobs['total']:,}"),
            ("jobs failed", f"{jobs['failed']:,}"),
            ("jobs remaining", f"{jobs['remaining']:,}"),
            ("cost in total", f"{cost['total']:.4f} {cost['currency']}"),
            ("last leg: wall time", f"{summary['wall_time_s']:.1f} s"),
            ("last leg: jobs/s", f"{summary['throughput_jobs_per_s']:.1f}"),
            ("last leg: requests", f"{summary['requests']:,}"),
            ("last leg: concurrency settled", f"{conc['settled']:g} (max {conc['max']})"),
        ]
    attempts = [e for e in events if e.kind == ATTEMPT]
    refused = sum(e.weight for e in attempts if e.error == "RateLimited")
    windows = series.pauses(events)
    out += [
        ("legs (process runs)", f"{len(legs)} ({sum(leg.killed for leg in legs)} killed)"),
        ("attempts, all legs", f"{sum(e.weight for e in attempts):,}"),
        ("429s, all legs", f"{refused:,}"),
        ("paused", f"{sum(end - start for start, end in windows):.1f} s in {len(windows)}"),
    ]
    return out


def _status_line(summary: dict[str, Any] | None, legs: list[series.Leg]) -> str:
    if summary is None:
        return "no summary.json: the last leg did not finish (killed?)"
    if legs and legs[-1].killed:
        return f"last leg killed; the summary is of an earlier leg: {summary['message']}"
    return f"{summary['status']}: {summary['message']}"


def _clock(t: float) -> str:
    return datetime.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def _read_summary(out_dir: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = orjson.loads((out_dir / SUMMARY).read_bytes())
    except FileNotFoundError:
        return None
    except orjson.JSONDecodeError as exc:
        raise ReportError(f"{out_dir / SUMMARY}: not valid JSON ({exc})") from None
    return data


def _failed_rows(output: Path | PartStore) -> dict[str, int]:
    """Failed rows by error class, from the committed parts of failed/."""
    return {c.error_class: c.count for c in failure_classes(output)}
