"""The report page as text: self-contained, every plot's element, data that cannot break out
of its script element, and the figures at the top."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from test_report_series import answered, ev, leg, refused

from batch.eventlog import END, PAUSE
from batch.report import build_page, figures, series, write_report
from batch.report.page import CHARTS

SUMMARY: dict[str, Any] = {
    "status": "completed",
    "message": "all 3 jobs succeeded",
    "jobs": {"total": 3, "succeeded": 3, "failed": 0, "remaining": 0},
    "cost": {"total": 0.25, "currency": "RUB"},
    "wall_time_s": 2.0,
    "throughput_jobs_per_s": 1.5,
    "requests": 4,
    "concurrency": {"settled": 2.0, "max": 16},
}


def _events() -> list[Any]:
    return [leg(0), answered(0, 0.1), refused(0.2), ev(PAUSE, 0.3, duration=1.0), ev(END, 2)]


def _data(page: str) -> dict[str, Any]:
    match = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page)
    assert match
    data: dict[str, Any] = json.loads(match.group(1))
    return data


def test_the_page_has_every_plot_and_needs_no_network() -> None:
    page = build_page(_events(), SUMMARY, {"NotFound": 2}, title="run")
    for chart in CHARTS:
        assert f'id="{chart["id"]}"' in page
    assert 'id="plot-failed-attempts"' in page and 'id="plot-failed-rows"' in page
    assert "var uPlot=" in page  # the library is inlined
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=", page)


def test_the_plot_data_is_the_series_of_the_events() -> None:
    events = _events()
    data = _data(build_page(events, SUMMARY, {"NotFound": 2}, title="run"))
    g = series.grid(series.legs(events))
    assert data["times"] == g.times
    assert data["series"]["jobs_per_s"] == series.throughput(events, g)["jobs_per_s"]
    assert data["pauses"] == [list(w) for w in series.pauses(events)]
    assert data["failed_attempts"] == {"RateLimited": 1}
    assert data["failed_rows"] == {"NotFound": 2}
    assert data["legs"] == [{"number": 1, "start": events[0].t, "killed": False}]


def test_text_from_the_run_cannot_end_a_script_element() -> None:
    page = build_page(_events(), SUMMARY, {"</script><b>x": 1}, title="<b>run</b>")
    assert "</script><b>x" not in page and "<b>run</b>" not in page
    assert _data(page)["failed_rows"] == {"</script><b>x": 1}


def test_figures_come_from_the_summary_and_the_log() -> None:
    events = _events()
    shown = dict(figures(SUMMARY, events, series.legs(events)))
    assert shown["jobs succeeded"] == "3 of 3"
    assert shown["429s, all legs"] == "1"
    assert shown["paused"] == "1.0 s in 1"
    assert shown["legs (process runs)"] == "1 (0 killed)"


def test_a_run_killed_before_any_summary_still_gets_a_report(tmp_path: Path) -> None:
    from batch.eventlog import EventLog

    EventLog.open(tmp_path, max_concurrency=4).flush()  # killed: no END, no summary.json
    path = write_report(tmp_path)
    page = path.read_text()
    assert "the last leg did not finish" in page
    assert _data(page)["legs"][0]["killed"] is True
