"""`--emulator` rehearses the real run: the emulator takes the place of the API's URLs and
key, and keeps what the user's settings say about answers (model, scope, timeout)."""

from __future__ import annotations

import pytest

from batch.cli.common import api_settings


def test_emulator_keeps_the_users_model_scope_and_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GIGACHAT_MODEL", "GigaChat-Pro")
    monkeypatch.setenv("GIGACHAT_SCOPE", "GIGACHAT_API_PERS")
    monkeypatch.setenv("GIGACHAT_TIMEOUT", "42")
    monkeypatch.setenv("GIGACHAT_BASE_URL", "https://api.example.invalid/v1")
    with api_settings({}, emulator=True, profile_name="b2b") as settings:
        assert settings.model == "GigaChat-Pro"
        assert settings.scope == "GIGACHAT_API_PERS"  # granted by the emulator too
        assert settings.timeout == 42.0
        assert settings.base_url.startswith("http://127.0.0.1:")
        assert settings.has_auth


def test_an_option_wins_over_the_variable_in_a_rehearsal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIGACHAT_SCOPE", "GIGACHAT_API_PERS")
    with api_settings({"scope": "GIGACHAT_API_CORP"}, emulator=True) as settings:
        assert settings.scope == "GIGACHAT_API_CORP"


def test_without_a_scope_setting_the_profile_chooses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GIGACHAT_SCOPE", raising=False)
    with api_settings({}, emulator=True, profile_name="corp") as settings:
        assert settings.scope == "GIGACHAT_API_CORP"
