"""Progress of a running batch on stderr: a live line on a terminal, a log line every few
seconds otherwise (cron, CI), nothing with --quiet."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Literal, TextIO

import anyio

from batch.summary import RunStats

ProgressMode = Literal["auto", "tty", "log", "off"]

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
    """One line: done/total, rate, tokens, cost, 429s, concurrency, ETA, and any run-wide
    pause in force."""
    answered = stats.succeeded + stats.failed
    elapsed = stats.elapsed
    rate = answered / elapsed if elapsed > 0 else 0.0
    done = stats.skipped + answered
    eta = _duration(stats.remaining / rate) if rate > 0 and stats.remaining else "-"
    return (
        f"{done}/{stats.total_jobs} done ({stats.failed} failed) | {rate:.1f} jobs/s | "
        f"{_count(stats.tokens.total_tokens)} tokens | {stats.cost:.2f} {stats.prices.currency} | "
        f"429s {stats.rate_limited} | concurrency {stats.concurrency}/{stats.max_concurrency} | "
        f"ETA {eta}" + (f" | {pause}" if pause else "")
    )


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
        self.interval = interval if interval is not None else (0.5 if mode == "tty" else 5.0)
        self._drawn = False

    def draw(self) -> None:
        line = progress_line(self.stats, self.pause() if self.pause is not None else "")
        if self.mode == "tty":
            self.stream.write("\r\x1b[2K" + line)
            self._drawn = True
        elif self.mode == "log":
            self.stream.write(time.strftime("%H:%M:%S ") + line + "\n")
        self.stream.flush()

    def announce(self, message: str) -> None:
        """A run-wide event (a pause, an outage and its end): logged, and printed on its
        own line (above the live line on a terminal) unless progress is off."""
        logger.info(message)
        if self.mode == "off":
            return
        prefix = "\r\x1b[2K" if self.mode == "tty" and self._drawn else ""
        self.stream.write(prefix + time.strftime("%H:%M:%S ") + message + "\n")
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
        if self.mode == "tty" and self._drawn:
            self.draw()
            self.stream.write("\n")
            self.stream.flush()
