"""The progress line: what it shows, and how it is drawn on a terminal and in a log."""

from __future__ import annotations

import io
import logging
import re
import sys

import pytest

from batch.api_types import Usage
from batch.pricing import PriceTable
from batch.progress import Progress, progress_line
from batch.summary import RunStats


def stats() -> RunStats:
    s = RunStats(kind="chat", prices=PriceTable.load(), total_jobs=100, max_concurrency=16)
    s.skipped = 10
    s.succeeded = 30
    s.failed = 2
    s.rate_limited = 4
    s.concurrency = 7
    s.add_usage("GigaChat", Usage(1000, 500))
    s.started -= 10.0  # ten seconds into the run
    return s


def test_line_shows_done_rate_tokens_cost_429s_concurrency_and_eta() -> None:
    line = progress_line(stats())
    assert line.startswith("42/100 done (2 failed)")
    assert "3.2 jobs/s" in line
    assert "1500 tokens" in line
    assert "429s 4" in line and "concurrency 7/16" in line
    assert "ETA 19s" in line  # 58 remaining at 3.2 jobs/s, rounded up


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_redraws_one_line_and_log_appends_lines() -> None:
    tty = FakeTerminal()
    live = Progress(stats(), stream=tty)
    live.draw()
    live.draw()
    live.close()
    assert tty.getvalue().count("\r") == 3 and tty.getvalue().endswith("\n")
    log = io.StringIO()
    logged = Progress(stats(), stream=log)
    logged.draw()
    logged.draw()
    assert logged.mode == "log" and log.getvalue().count("\n") == 2


def test_quiet_mode_draws_nothing() -> None:
    out = io.StringIO()
    Progress(stats(), "off", stream=out).close()
    assert out.getvalue() == ""


def test_line_labels_this_runs_figures_and_counts_failures_of_earlier_runs_too() -> None:
    s = stats()
    s.failed_before = 5  # failed rows the output directory held when this run began
    line = progress_line(s)
    assert line.startswith("42/100 done (7 failed) | this run: 3.2 jobs/s, 1500 tokens, ")


def test_eta_is_rounded_up_so_thousands_left_never_show_0s() -> None:
    s = RunStats(kind="embed", prices=PriceTable.load(), total_jobs=20_000, max_concurrency=16)
    s.skipped = 6_832  # done before this run
    s.succeeded = 10_000
    s.started -= 2.5  # 4,000 jobs/s: 3,168 left take 0.8 s
    assert "ETA 1s" in progress_line(s)


def test_log_lines_start_with_an_iso_date_time() -> None:
    log = io.StringIO()
    Progress(stats(), "log", stream=log).draw()
    iso = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}[+-]\d{2}:\d{2}"
    assert re.match(iso + " 42/100 done", log.getvalue())


def test_engine_warnings_on_the_command_line_are_dated_and_not_doubled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from batch.cli import _log_to_stderr

    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    _log_to_stderr()
    _log_to_stderr()  # a second command in the same process (tests) replaces the handler
    logging.getLogger("batch.client").warning("TLS verification is off")
    iso = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}[+-]\d{2}:\d{2}"
    assert re.fullmatch(iso + r" WARNING: TLS verification is off\n", err.getvalue())


def test_a_run_wide_pause_shows_on_the_line_and_is_announced_on_a_line_of_its_own() -> None:
    log = io.StringIO()
    progress = Progress(stats(), stream=log, pause=lambda: "PAUSED 12.0s after 429s")
    progress.announce("paused 12.0 s: the server's Retry-After (every worker waits)")
    progress.draw()
    first, second = log.getvalue().splitlines()
    assert first.endswith("paused 12.0 s: the server's Retry-After (every worker waits)")
    assert second.endswith("| PAUSED 12.0s after 429s")


def test_announcements_keep_the_live_line_below_them() -> None:
    tty = FakeTerminal()
    live = Progress(stats(), stream=tty)
    live.draw()
    live.announce("API unreachable since 03:12:07 (refused); paused, probing with one request")
    text = tty.getvalue()
    assert "API unreachable since" in text and text.rstrip("\n").endswith("ETA 19s")
