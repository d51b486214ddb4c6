"""Headless Chromium for the report tests: find a browser, dump a page's DOM after its
scripts ran, take a screenshot. Outside CI a missing browser skips the test; in CI it fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_browser() -> str:
    for name in _NAMES:
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("no headless Chromium on PATH in CI (.ci/run installs the chromium package)")
    pytest.skip("no Chromium on PATH: install it (Debian: apt-get install chromium) to run this")


def _run(browser: str, *args: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=10000",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    return proc.stdout


def dump_dom(browser: str, page: Path) -> str:
    """The page's DOM after its scripts ran, as HTML."""
    return _run(browser, "--dump-dom", page.resolve().as_uri())


def screenshot(browser: str, page: Path, png: Path, *, size: str = "1100,2300") -> None:
    """A PNG of the page at `size` (width,height in CSS pixels)."""
    _run(browser, f"--window-size={size}", f"--screenshot={png}", page.resolve().as_uri())
