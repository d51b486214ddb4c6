"""The emulator's pure parts: the token count, the content functions, the config and
profiles, and the `gigabatch emulator` command's help."""

from __future__ import annotations

import math
import signal
import subprocess
import sys

import orjson
import pytest
from click.testing import CliRunner

from batch.cli import main
from batch.emulator import PROFILES, EmulatorConfig, count_tokens, profile
from batch.emulator.config import knob_fields
from batch.emulator.content import (
    answer_length,
    answer_text,
    embedding,
    embedding_json,
    function_call,
)


@pytest.mark.parametrize(("text", "tokens"), [
    ("", 0),
    ("   ", 0),
    ("word", 1),
    ("wordy", 2),
    ("Hello, world!", 6),
    ("Привет, мир", 4),
    ("a-b", 3),
])
def test_count_tokens_counts_four_character_runs_and_punctuation(text: str, tokens: int) -> None:
    assert count_tokens(text) == tokens


@pytest.mark.parametrize("tokens", [1, 7, 64, 500])
def test_answer_text_has_exactly_the_requested_tokens(tokens: int) -> None:
    assert count_tokens(answer_text("Explain photosynthesis to a child", tokens)) == tokens


def test_answer_text_echoes_the_prompt_words() -> None:
    assert answer_text("Hello brave new world", 4) == "Hell brav new worl"


def test_answer_length_honours_the_directive_else_stays_in_range() -> None:
    assert answer_length("x [[answer_tokens=123]]", b"k", 16, 64) == 123
    lengths = {answer_length("x", str(i).encode(), 16, 64) for i in range(300)}
    assert min(lengths) >= 16 and max(lengths) <= 64 and len(lengths) > 30


def test_embedding_is_a_stable_unit_vector_per_model_and_text() -> None:
    vector = embedding("some text", "Embeddings", 1024)
    assert len(vector) == 1024
    assert math.isclose(math.hypot(*vector), 1.0, rel_tol=1e-12)
    assert vector == embedding("some text", "Embeddings", 1024)
    assert vector != embedding("some text!", "Embeddings", 1024)
    assert vector != embedding("some text", "Embeddings-2", 1024)


@pytest.mark.parametrize("dims", [1024, 2560])
def test_embedding_json_is_the_same_vector_as_text(dims: int) -> None:
    assert orjson.loads(embedding_json("text", "EmbeddingsGigaR", dims)) == embedding(
        "text", "EmbeddingsGigaR", dims
    )


def test_different_texts_get_nearly_orthogonal_vectors() -> None:
    first, second = embedding("cat", "Embeddings", 1024), embedding("dog", "Embeddings", 1024)
    assert abs(sum(a * b for a, b in zip(first, second, strict=True))) < 0.2


def test_function_call_uses_the_forced_function() -> None:
    functions = [{"name": "a"}, {"name": "b", "parameters": {"properties": {
        "flag": {"type": "boolean"}, "mode": {"type": "string", "enum": ["fast", "slow"]}}}}]
    assert function_call(functions, "b", "question") == {
        "name": "b", "arguments": {"flag": True, "mode": "fast"}}


def test_profile_applies_overrides_over_its_base() -> None:
    config = profile("pers", stream_limit=3, latency_base_ms=5)
    assert config.scope == "GIGACHAT_API_PERS"
    assert config.effective_stream_limit == 3
    assert config.latency_base_ms == 5
    assert profile("pers").effective_stream_limit == 1
    assert profile("corp").effective_stream_limit == 10


@pytest.mark.parametrize(("name", "knobs", "message"), [
    ("nope", {}, "unknown emulator profile"),
    ("b2b", {"warp": 9}, "unknown emulator knob"),
    ("b2b", {"retry_after": "soon"}, "retry_after must be one of"),
    ("b2b", {"fault_5xx": 2}, "fault_5xx must be a rate"),
    ("b2b", {"stream_limit": 1.5}, "stream_limit must be an integer"),
])
def test_profile_rejects_bad_names_and_knobs(name: str, knobs: dict[str, object],
                                             message: str) -> None:
    with pytest.raises(ValueError, match=message):
        profile(name, **knobs)


def test_ceiling_is_the_stream_limit_over_the_mean_latency() -> None:
    config = EmulatorConfig(stream_limit=4, latency_base_ms=100, latency_per_prompt_token_ms=0,
                            latency_per_completion_token_ms=5)
    assert config.mean_latency_s(10, 20) == pytest.approx(0.2)
    assert config.ceiling_rps(10, 20) == pytest.approx(20.0)
    assert profile("fast").ceiling_rps(10, 20) == math.inf


def test_emulator_help_explains_profiles_and_every_knob() -> None:
    result = CliRunner().invoke(main, ["emulator", "--help"])
    assert result.exit_code == 0
    for name in PROFILES:
        assert name in result.output
    for knob in knob_fields():
        assert "--" + knob.name.replace("_", "-") in result.output
    assert "Example" in result.output


def test_emulator_command_rejects_a_bad_knob_with_usage_error() -> None:
    result = CliRunner().invoke(main, ["emulator", "--retry-after", "soon"])
    assert result.exit_code == 2
    assert "retry_after must be one of" in result.output


def test_emulator_command_prints_its_urls_and_stops_on_ctrl_c() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "from batch.cli import main; main()",
         "emulator", "--profile", "pers"],
        stdout=subprocess.PIPE, text=True,
        # Started from a non-interactive shell SIGINT may arrive ignored; restore it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert child.stdout is not None
    lines = [child.stdout.readline() for _ in range(10)]
    assert lines[-1].startswith("Press Ctrl-C")
    child.send_signal(signal.SIGINT)
    assert child.wait(timeout=10) == 0
    child.stdout.close()
    exports = dict(
        line.removeprefix("export ").strip().split("=", 1)
        for line in lines
        if line.startswith("export ")
    )
    assert exports["GIGACHAT_BASE_URL"].startswith("http://127.0.0.1:")
    assert exports["GIGACHAT_BASE_URL"].endswith("/api/v1")
    assert exports["GIGACHAT_AUTH_URL"].endswith("/api/v2/oauth")
    assert exports["GIGACHAT_SCOPE"] == "GIGACHAT_API_PERS" and exports["GIGACHAT_CREDENTIALS"]
    assert "the emulator's own test key, not a secret" in "".join(lines)


def test_emulator_print_env_gives_only_export_lines_on_stdout() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "from batch.cli import main; main()",
         "emulator", "--profile", "fast", "--print-env"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    assert child.stdout is not None
    lines = [child.stdout.readline() for _ in range(4)]
    child.send_signal(signal.SIGINT)
    assert child.wait(timeout=10) == 0
    assert child.stdout.read() == ""
    child.stdout.close()
    assert [line.split("=", 1)[0] for line in lines] == [
        "export GIGACHAT_BASE_URL",
        "export GIGACHAT_AUTH_URL",
        "export GIGACHAT_CREDENTIALS",
        "export GIGACHAT_SCOPE",
    ]
