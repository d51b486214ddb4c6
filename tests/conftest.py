"""Every test gets its own answer cache: nothing is read from or written to ~/.cache, and
no test sees another's answers (subprocesses inherit the variable)."""

from __future__ import annotations

from pathlib import Path

import pytest

from batch.cache import CACHE_DIR_VARIABLE


@pytest.fixture(autouse=True)
def answer_cache_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    cache_dir = tmp_path_factory.mktemp("answer-cache")
    monkeypatch.setenv(CACHE_DIR_VARIABLE, str(cache_dir))
    return cache_dir
