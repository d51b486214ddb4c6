"""Progress of a running batch on stderr: a live line on a terminal, a log line every few
seconds otherwise (cron, CI), nothing with --quiet; a text bar (tqdm, no widgets) for the
Python API in a notebook or a terminal."""

from __future__ import annotations

import datetime
import logging
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

import anyio

from batch.summary import RunStats

ProgressMode = Literal["auto", "tty", "log", "bar", "off"]

logger = logging.getLogger(__name__)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def _count(n: float) -> str:
    if n >= 1_000_000:
        return f"{n / 1_000_000:.1f}M"
    if n >= 10_000:
        return f"{n / 1000:.0f}k"
    return f"{n:.0f}"


def progress_line(stats: RunStats, pause: str = "") -> str:
    """One line: the output directory's done/total and failed (this run's and earlier
    runs'), then this run's rate, tokens and cost, 429s, concurrency, the ETA, and any
    run-wide pause in force."""
    answered = stats.succeeded + stats.failed
    elapsed = stats.elapsed
    rate = answered / elapsed if elapsed > 0 else 0.0
    done = stats.skipped + answered + stats.unchanged
    # Rounded up: "ETA 0s" must not show while thousands of jobs remain.
    eta = _duration(math.ceil(stats.remaining / rate)) if rate > 0 and stats.remaining else "-"
    reused = f", {_count(stats.from_cache)} from cache" if stats.from_cache else ""
    return (
        f"{done}/{stats.total_jobs} done ({stats.failed_before + stats.failed} failed{reused}) | "
        f"this run: {rate:.1f} jobs/s, {_count(stats.tokens.total_tokens)} tokens, "
        f"{stats.cost:.2f} {stats.prices.currency} | "
        f"429s {stats.rate_limited} | concurrency {stats.concurrency}/{stats.max_concurrency} | "
        f"ETA {eta}" + (f" | {pause}" if pause else "")
    )


@dataclass(frozen=True, slots=True)
class RunStart:
    """What a run is about to do, for the start line of its log."""

    jobs_path: Path
    out_dir: Path | str
    kind: str
    model: str | None
    total_jobs: int
    done_before: int
    max_concurrency: int
    budget: str | None
    invalid: int = 0

    def line(self) -> str:
        done = f", {self.done_before} done before" if self.done_before else ""
        invalid = f", {self.invalid} invalid skipped" if self.invalid else ""
        return (
            f"start: {self.jobs_path} ({self.total_jobs} jobs{done}{invalid}) -> {self.out_dir} | "
            f"kind {self.kind}, model {self.model or 'default'} | "
            f"concurrency ceiling {self.max_concurrency} | budget {self.budget or 'none'}"
        )


def log_time(at: float | None = None) -> str:
    """The local date-time (now, or the epoch time `at`) with its UTC offset, as log lines
    start with."""
    moment = datetime.datetime.now() if at is None else datetime.datetime.fromtimestamp(at)
    return moment.astimezone().isoformat(timespec="seconds")


class Progress:
    """Draws `progress_line` every `interval` seconds until cancelled; `pause` says which
    run-wide pause is in force ("" for none), and `announce` prints an event line."""

    def __init__(
        self,
        stats: RunStats,
        mode: ProgressMode = "auto",
        *,
        stream: TextIO | None = None,
        interval: float | None = None,
        pause: Callable[[], str] | None = None,
    ) -> None:
        self.stats = stats
        self.pause = pause
        self.stream = stream if stream is not None else sys.stderr
        if mode == "auto":
            mode = "tty" if self.stream.isatty() else "log"
        self.mode = mode
        self.interval = interval if interval is not None else (5.0 if mode == "log" else 0.5)
        self._drawn = False
        self._bar = ProgressBar(stats, self.stream) if mode == "bar" else None

    def draw(self) -> None:
        if self._bar is not None:
            self._bar.draw()
            return
        line = progress_line(self.stats, self.pause() if self.pause is not None else "")
        if self.mode == "tty":
            self.stream.write("\r\x1b[2K" + line)
            self._drawn = True
        elif self.mode == "log":
            self.stream.write(f"{log_time()} {line}\n")
        self.stream.flush()

    def start_line(self, start: RunStart) -> None:
        """The start line, before any progress (on a terminal too: it is the run's heading)."""
        if self.mode == "off":
            return
        prefix = f"{log_time()} " if self.mode == "log" else ""
        self.stream.write(f"{prefix}{start.line()}\n")
        self.stream.flush()

    def notice(self, message: str) -> None:
        """A line about the run that shows in every mode, --quiet included (a full disk)."""
        if self._drawn:
            self.stream.write("\r\x1b[2K")
        self.stream.write(f"{log_time()} {message}\n")
        self.stream.flush()

    def announce(self, message: str) -> None:
        """A run-wide event (a pause, an outage and its end): logged, and printed on its
        own line (above the live line on a terminal) unless progress is off."""
        logger.info(message)
        if self.mode == "off":
            return
        prefix = "\r\x1b[2K" if self.mode == "tty" and self._drawn else ""
        self.stream.write(f"{prefix}{log_time()} {message}\n")
        if self.mode == "tty" and self._drawn:
            self.draw()
        self.stream.flush()

    async def run(self) -> None:
        if self.mode == "off":
            return
        while True:
            await anyio.sleep(self.interval)
            self.draw()

    def close(self) -> None:
        """End the live line so what follows starts on a fresh line."""
        if self._bar is not None:
            self._bar.close()
            return
        if self.mode == "tty" and self._drawn:
            self.draw()
            self.stream.write("\n")
            self.stream.flush()


class ProgressBar:
    """`progress_line`'s figures as a tqdm text bar: jobs done of the input's total."""

    def __init__(self, stats: RunStats, stream: TextIO) -> None:
        from tqdm import tqdm

        self.stats = stats
        self._bar = tqdm(total=stats.total_jobs, unit="job", file=stream, dynamic_ncols=True)

    def draw(self) -> None:
        self._update()
        self._bar.refresh()

    def close(self) -> None:
        self._update()
        self._bar.close()  # draws the final state once

    def _update(self) -> None:
        s = self.stats
        self._bar.n = s.skipped + s.succeeded + s.failed
        self._bar.set_postfix_str(
            f"{s.failed} failed, {_count(s.tokens.total_tokens)} tokens, "
            f"{s.cost:.2f} {s.prices.currency}, 429s {s.rate_limited}, "
            f"concurrency {s.concurrency}/{s.max_concurrency}",
            refresh=False,
        )
