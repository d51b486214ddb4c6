"""The remembered stream limit, kept per endpoint, scope and model family."""

from __future__ import annotations

from pathlib import Path

import pytest

from batch.cache import RememberedLimit, model_family, recall_limit, remember_limit

URL = "https://gigachat.devices.sberbank.ru/api/v1"


def test_nothing_is_remembered_in_a_new_cache_directory(tmp_path: Path) -> None:
    assert recall_limit(tmp_path / "new", URL, "GIGACHAT_API_B2B", "GigaChat") is None
    assert not (tmp_path / "new").exists()


def test_a_remembered_limit_is_recalled_with_its_time(tmp_path: Path) -> None:
    remember_limit(tmp_path, URL, "GIGACHAT_API_B2B", "GigaChat", 10, now=1000.0)
    assert recall_limit(tmp_path, URL, "GIGACHAT_API_B2B", "GigaChat") == RememberedLimit(
        10, 1000.0
    )


def test_limits_are_kept_apart_by_endpoint_scope_and_family(tmp_path: Path) -> None:
    remember_limit(tmp_path, URL, "GIGACHAT_API_B2B", "GigaChat", 10)
    remember_limit(tmp_path, URL, "GIGACHAT_API_PERS", "GigaChat", 1)
    remember_limit(tmp_path, URL, "GIGACHAT_API_B2B", "Embeddings", 32)
    remember_limit(tmp_path, "http://127.0.0.1:8080/api/v1", "GIGACHAT_API_B2B", "GigaChat", 4)
    limits = [
        recall_limit(tmp_path, URL, "GIGACHAT_API_B2B", "GigaChat"),
        recall_limit(tmp_path, URL, "GIGACHAT_API_PERS", "GigaChat"),
        recall_limit(tmp_path, URL, "GIGACHAT_API_B2B", "Embeddings"),
        recall_limit(tmp_path, "http://127.0.0.1:8080/api/v1", "GIGACHAT_API_B2B", "GigaChat"),
    ]
    assert [limit.stream_limit for limit in limits if limit] == [10, 1, 32, 4]


def test_the_latest_settled_limit_replaces_the_earlier_one(tmp_path: Path) -> None:
    remember_limit(tmp_path, URL, "S", "GigaChat", 10, now=1.0)
    remember_limit(tmp_path, URL + "/", "S", "GigaChat", 6, now=2.0)
    assert recall_limit(tmp_path, URL, "S", "GigaChat") == RememberedLimit(6, 2.0)


def test_a_limit_below_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        remember_limit(tmp_path, URL, "S", "GigaChat", 0)


def test_the_family_of_a_model_drops_the_version_an_answer_reports() -> None:
    assert model_family("GigaChat:2.0.28.2") == "GigaChat"
    assert model_family("Embeddings") == "Embeddings"
