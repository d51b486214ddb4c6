"""Batch prices: a price table's optional `batch` section prices `--mode batches` runs and
`estimate --mode batches`; without it the online prices apply."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from batch.api_types import Usage
from batch.cli import main
from batch.pricing import PriceTable

TABLE = {
    "taken": "2030-01-01",
    "chat": {"GigaChat": 1000, "GigaChat-Pro": 3000},
    "embeddings": {"Embeddings": 40},
    "batch": {"GigaChat": 500, "Embeddings": 20},
}


def table(tmp_path: Path, data: dict[str, object]) -> PriceTable:
    path = tmp_path / "prices.json"
    path.write_bytes(orjson.dumps(data))
    return PriceTable.load(path)


def test_batch_prices_replace_the_online_ones_where_given(tmp_path: Path) -> None:
    prices = table(tmp_path, TABLE).for_batches()
    million = Usage(prompt_tokens=1_000_000)
    assert prices.cost("GigaChat:2.0.28.2", million) == 500
    assert prices.cost("GigaChat-Pro", million) == 3000
    assert prices.cost("Embeddings", million) == 20
    assert prices.source.endswith("(batch prices)")


def test_without_batch_prices_the_table_is_unchanged(tmp_path: Path) -> None:
    prices = table(tmp_path, {"chat": {"GigaChat": 1000}})
    assert prices.for_batches() is prices


def test_estimate_mode_batches_prices_with_the_batch_prices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("GIGACHAT_CREDENTIALS", "GIGACHAT_ACCESS_TOKEN", "GIGACHAT_MODEL"):
        monkeypatch.delenv(name, raising=False)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"id": "a", "prompt": "hello there", "max_tokens": 10}\n')
    (tmp_path / "prices.json").write_bytes(orjson.dumps(TABLE))
    costs = {}
    for mode in ("online", "batches"):
        args = ["estimate", str(jobs), "--offline", "--json", "--quiet", "--mode", mode,
                "--prices", str(tmp_path / "prices.json")]
        result = CliRunner().invoke(main, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        costs[mode] = orjson.loads(result.stdout)["total"]["cost"]["high"]
    assert costs["batches"] == pytest.approx(costs["online"] / 2)
