"""ClientSettings: the SDK's GIGACHAT_* variables, CLI overrides, and secrets that never print."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest

from batch.errors import ConfigError
from batch.settings import ClientSettings, Secret

KEY = "Y2xpZW50OnNlY3JldA=="  # base64("client:secret")

SDK_ENV = {
    "GIGACHAT_BASE_URL": "https://gigachat-preview.devices.sberbank.ru/api/v1",
    "GIGACHAT_AUTH_URL": "https://auth.example/api/v2/oauth",
    "GIGACHAT_CREDENTIALS": KEY,
    "GIGACHAT_SCOPE": "GIGACHAT_API_CORP",
    "GIGACHAT_USER": "alice",
    "GIGACHAT_PASSWORD": "pw-secret",
    "GIGACHAT_ACCESS_TOKEN": "tok-secret",
    "GIGACHAT_CERT_FILE": "/certs/client.crt",
    "GIGACHAT_KEY_FILE": "/certs/client.key",
    "GIGACHAT_KEY_FILE_PASSWORD": "keypw-secret",
    "GIGACHAT_CA_BUNDLE_FILE": "/certs/russian_trusted_root_ca.pem",
    "GIGACHAT_VERIFY_SSL_CERTS": "false",
    "GIGACHAT_MODEL": "GigaChat-Pro",
    "GIGACHAT_TIMEOUT": "90",
}


def test_every_sdk_variable_is_honoured() -> None:
    s = ClientSettings.from_env(SDK_ENV)
    assert s.base_url == SDK_ENV["GIGACHAT_BASE_URL"]
    assert s.auth_url == SDK_ENV["GIGACHAT_AUTH_URL"]
    assert s.credentials == Secret(KEY)
    assert s.scope == "GIGACHAT_API_CORP"
    assert s.user == "alice"
    assert s.password == Secret("pw-secret")
    assert s.access_token == Secret("tok-secret")
    assert s.cert_file == "/certs/client.crt"
    assert s.key_file == "/certs/client.key"
    assert s.key_file_password == Secret("keypw-secret")
    assert s.ca_bundle_file == "/certs/russian_trusted_root_ca.pem"
    assert s.verify_ssl_certs is False
    assert s.model == "GigaChat-Pro"
    assert s.timeout == 90.0


def test_defaults_are_the_public_api_with_verification_on() -> None:
    s = ClientSettings.from_env({})
    assert s.base_url == "https://gigachat.devices.sberbank.ru/api/v1"
    assert s.auth_url == "https://ngw.devices.sberbank.ru:9443/api/v2/oauth"
    assert s.scope == "GIGACHAT_API_PERS"
    assert s.verify_ssl_certs is True
    assert s.connect_timeout < s.timeout


def test_given_overrides_win_over_the_environment() -> None:
    s = ClientSettings.from_env(SDK_ENV, scope="GIGACHAT_API_B2B", timeout=5, verify_ssl_certs=True)
    assert s.scope == "GIGACHAT_API_B2B"
    assert s.timeout == 5.0
    assert s.verify_ssl_certs is True


def test_none_overrides_leave_the_environment_in_force() -> None:
    s = ClientSettings.from_env(SDK_ENV, scope=None, verify_ssl_certs=None)
    assert s.scope == "GIGACHAT_API_CORP"
    assert s.verify_ssl_certs is False


def test_string_overrides_for_secrets_are_wrapped() -> None:
    s = ClientSettings.from_env({}, password="pw", user="u")
    assert isinstance(s.password, Secret)


def test_empty_variables_count_as_unset() -> None:
    s = ClientSettings.from_env({"GIGACHAT_CREDENTIALS": "", "GIGACHAT_SCOPE": " "})
    assert s.credentials is None
    assert s.scope == "GIGACHAT_API_PERS"


def test_process_environment_is_read_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIGACHAT_MODEL", "GigaChat-Max")
    assert ClientSettings.from_env().model == "GigaChat-Max"


@pytest.mark.parametrize(
    ("text", "value"),
    [("true", True), ("1", True), ("Yes", True), ("on", True), ("False", False), ("0", False)],
)
def test_verify_ssl_certs_reads_booleans_like_the_sdk(text: str, value: bool) -> None:
    s = ClientSettings.from_env({"GIGACHAT_VERIFY_SSL_CERTS": text})
    assert s.verify_ssl_certs is value


def test_unreadable_verify_ssl_certs_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="GIGACHAT_VERIFY_SSL_CERTS"):
        ClientSettings.from_env({"GIGACHAT_VERIFY_SSL_CERTS": "maybe"})


def test_unreadable_timeout_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="GIGACHAT_TIMEOUT"):
        ClientSettings.from_env({"GIGACHAT_TIMEOUT": "forever"})


def test_non_positive_timeout_is_refused() -> None:
    with pytest.raises(ConfigError, match="timeout"):
        ClientSettings.from_env({}, timeout=0)


def test_credentials_that_are_not_base64_are_a_one_line_config_error_without_the_value() -> None:
    pasted_secret = "my client secret!"
    with pytest.raises(ConfigError) as info:
        ClientSettings.from_env({"GIGACHAT_CREDENTIALS": pasted_secret})
    message = str(info.value)
    assert "GIGACHAT_CREDENTIALS" in message
    assert pasted_secret not in message
    assert "\n" not in message


def test_unknown_override_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match="scopes"):
        ClientSettings.from_env({}, scopes="x")


def test_secret_shows_as_stars_everywhere_but_reveal() -> None:
    secret = Secret("hunter2")
    assert repr(secret) == "'***'"
    assert str(secret) == "***"
    assert f"{secret}" == "***"
    assert secret.reveal() == "hunter2"


def test_secret_refuses_to_be_pickled() -> None:
    with pytest.raises(TypeError):
        pickle.dumps(Secret("hunter2"))


def test_settings_survive_asdict_and_deepcopy_with_secrets_still_hidden() -> None:
    settings = ClientSettings.from_env(SDK_ENV)
    assert copy.deepcopy(settings) == settings
    as_dict = dataclasses.asdict(settings)
    assert as_dict["password"].reveal() == "pw-secret"
    assert "pw-secret" not in str(as_dict)


def test_settings_repr_shows_no_secret() -> None:
    text = repr(ClientSettings.from_env(SDK_ENV)) + str(ClientSettings.from_env(SDK_ENV))
    for name in ("GIGACHAT_CREDENTIALS", "GIGACHAT_PASSWORD", "GIGACHAT_ACCESS_TOKEN"):
        assert SDK_ENV[name] not in text
    assert SDK_ENV["GIGACHAT_KEY_FILE_PASSWORD"] not in text
    assert "alice" in text  # a user name is not a secret; it helps to see which one is used


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, False),
        ({"credentials": KEY}, True),
        ({"user": "u"}, False),
        ({"user": "u", "password": "p"}, True),
        ({"access_token": "t"}, True),
        ({"cert_file": "/c.pem"}, True),
    ],
)
def test_has_auth_needs_one_complete_way_in(overrides: dict[str, str], expected: bool) -> None:
    assert ClientSettings.from_env({}, **overrides).has_auth is expected
