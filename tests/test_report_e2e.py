"""`gigabatch report` end to end: a real run against the emulator (a 429 storm, a kill -9
and a resume), its report rendered by headless Chromium with every plot drawn."""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from pathlib import Path

import pytest
from report_browser import dump_dom, find_browser, screenshot
from test_e2e_run import FAST, chat_jobs, gigabatch, start

from batch.emulator import profile, serve_emulator
from batch.eventlog import ATTEMPT, LEG, PAUSE, read_events
from batch.report import series
from batch.report.page import CHARTS

pytestmark = pytest.mark.e2e

PLOTS = [c["id"] for c in CHARTS] + ["plot-failed-attempts", "plot-failed-rows"]


def _storm_run_killed_then_resumed(tmp_path: Path) -> Path:
    jobs = tmp_path / "jobs.jsonl"
    chat_jobs(jobs, 500, bad_every=50)
    out = tmp_path / "out"
    args = ("run", str(jobs), "--out", str(out), "--flush-interval", "0.1", "--max-cost", "10")
    cfg = profile(
        "b2b",
        stream_limit=6,
        fault_storm=0.01,
        storm_s=0.4,
        retry_after="seconds",
        **{**FAST, "latency_base_ms": 15.0},
    )
    with serve_emulator(cfg) as emu:
        proc = start(emu, *args)
        deadline = time.monotonic() + 30
        while _answered(out) < 150:  # kill -9 in the middle of the run
            assert time.monotonic() < deadline, "the first leg answered too little"
            time.sleep(0.05)
        proc.kill()
        proc.wait()
        code, err = gigabatch(emu, *args, "-q")
    assert code == 3, err  # the NoSuchModel jobs failed; everything else answered
    return out


def _answered(out: Path) -> int:
    if not (out / "events.bin").exists():
        return 0
    return sum(e.jobs for e in read_events(out) if e.kind == ATTEMPT and not e.error)


def test_report_of_a_storm_a_kill_and_a_resume_renders_every_plot(tmp_path: Path) -> None:
    browser = find_browser()
    out = _storm_run_killed_then_resumed(tmp_path)
    events = read_events(out)
    legs = series.legs(events)
    assert [leg.killed for leg in legs] == [True, False]
    assert any(e.kind == PAUSE for e in events), "the storm never paused the run"
    code, err = gigabatch_report(out)
    assert code == 0, err
    page = out / "report.html"
    text = page.read_text()
    assert "http://" not in text.replace("http://www.w3.org", "") and "https://cdn" not in text
    dom = dump_dom(browser, page)
    assert 'data-rendered="ok"' in dom, dom[-2000:]
    assert re.search(r'<div id="errors">\s*</div>', dom)
    for plot in PLOTS:
        match = re.search(rf'id="{plot}" data-points="(\d+)"', dom)
        assert match and int(match.group(1)) > 0, f"{plot} was not drawn"
    assert dom.count("<canvas") >= len(CHARTS)
    assert "leg 1 (killed)" in text or '"killed":true' in text
    assert "NotFound" in dom and "RateLimited" in dom
    png = tmp_path / "report.png"
    screenshot(browser, page, png)
    assert png.stat().st_size > 20_000
    if os.environ.get("GIGABATCH_REPORT_SCREENSHOT"):  # how docs/report.png was made
        Path(os.environ["GIGABATCH_REPORT_SCREENSHOT"]).write_bytes(png.read_bytes())


def gigabatch_report(out: Path) -> tuple[int, str]:
    from click.testing import CliRunner

    from batch.cli import main

    result = CliRunner().invoke(main, ["report", str(out)])
    return result.exit_code, result.output


def test_the_log_holds_every_attempt_and_429_the_server_saw(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    chat_jobs(jobs, 150)
    cfg = profile(
        "b2b", stream_limit=8, fault_storm=0.015, storm_s=0.3, retry_after="seconds", **FAST
    )
    with serve_emulator(cfg) as emu:
        code, err = gigabatch(emu, "run", str(jobs), "--out", str(tmp_path / "out"), "-q")
        stats = emu.stats()
    assert code == 0, err
    events = read_events(tmp_path / "out")
    attempts = [e for e in events if e.kind == ATTEMPT]
    chat = Counter(
        a["status"] for a in stats["arrivals"] if a["path"].startswith("/api/v1/chat")
    )
    assert len(attempts) == sum(chat.values())
    assert sum(e.error == "RateLimited" for e in attempts) == chat[429]
    assert sum(e.jobs for e in attempts if not e.error) == 150
    assert [e.kind for e in events].count(LEG) == 1
    windows = series.pauses(events)
    assert len(windows) >= 1
    slack = 0.5  # the client pauses when a 429 reaches it, a little after the server's clock
    for w in stats["retry_after_windows"]:  # every window the server announced was kept
        assert any(
            start - slack <= w["start"] and w["end"] <= end + slack for start, end in windows
        )


def test_report_of_a_directory_without_a_run_is_a_clear_error(tmp_path: Path) -> None:
    code, output = gigabatch_report(tmp_path)
    assert code == 2
    assert "no events.bin or summary.json" in output
