"""`gigabatch cache info` and `gigabatch cache prune` on a real store."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from batch.cache import AnswerStore, CachedAnswer, cache_key
from batch.cli import main


def fill(cache_dir: Path, ages_days: list[float], model: str = "Embeddings:1") -> None:
    now = time.time()
    with AnswerStore(cache_dir) as store:
        store.put_many(
            (
                cache_key("t", f"{model}{i}".encode()),
                CachedAnswer(b"v" * 4096, model, now - d * 86_400, 7),
            )
            for i, d in enumerate(ages_days)
        )


def test_info_reports_entries_by_model(tmp_path: Path) -> None:
    fill(tmp_path, [1, 2, 3])
    fill(tmp_path, [1], model="Embeddings:2")
    result = CliRunner().invoke(main, ["cache", "info", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "entries: 4," in result.output
    assert "Embeddings:1: 3 entries" in result.output
    assert "Embeddings:2: 1 entries" in result.output


def test_info_json_reads_the_directory_from_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(tmp_path, [0.5, 40])
    monkeypatch.setenv("GIGABATCH_CACHE_DIR", str(tmp_path))
    result = CliRunner().invoke(main, ["cache", "info", "--json"])
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.output)
    assert report["entries"] == 2
    assert report["newest"] - report["oldest"] == pytest.approx(39.5 * 86_400, abs=5)
    assert report["by_model"] == [
        {"model": "Embeddings:1", "entries": 2, "bytes": 8192, "tokens": 14}
    ]


def test_info_on_a_directory_without_a_cache_creates_nothing(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["cache", "info", "--cache-dir", str(tmp_path / "none")])
    assert result.exit_code == 0
    assert "entries: 0," in result.output
    assert not (tmp_path / "none").exists()


def test_prune_older_than_drops_only_old_answers(tmp_path: Path) -> None:
    fill(tmp_path, [1, 10, 31, 45])
    result = CliRunner().invoke(
        main, ["cache", "prune", "--older-than", "30d", "--cache-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "removed 2 entries" in result.output
    with AnswerStore(tmp_path) as store:
        assert store.info().entries == 2


def test_prune_max_size_keeps_the_cache_under_the_size(tmp_path: Path) -> None:
    fill(tmp_path, [float(d) for d in range(500)])
    result = CliRunner().invoke(
        main, ["cache", "prune", "--max-size", "1MB", "--cache-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    with AnswerStore(tmp_path) as store:
        info = store.info()
    assert info.live_bytes <= 1_000_000
    assert 0 < info.entries < 500


def test_prune_needs_an_age_or_a_size(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["cache", "prune", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "--older-than" in result.output


def test_a_malformed_age_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["cache", "prune", "--older-than", "a month", "--cache-dir", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "error: age 'a month'" in result.output


@pytest.mark.parametrize("command", ["info", "prune"])
def test_cache_commands_have_help_with_an_example(command: str) -> None:
    result = CliRunner().invoke(main, ["cache", command, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output
