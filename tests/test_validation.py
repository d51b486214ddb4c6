"""Every validation rule of job lines: each problem names the file, the line and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from batch.errors import ConfigError
from jobs.base import JobKind, Problem
from jobs.chat import ChatKind, ChatOptions
from jobs.embeddings import EmbeddingOptions, EmbeddingsKind
from jobs.readers import validate_jobs
from jobs.registry import kind_from_values


def _problems(tmp_path: Path, kind: JobKind, *records: dict[str, Any]) -> list[Problem]:
    path = tmp_path / "jobs.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return validate_jobs(path, kind).problems


def _only_problem(tmp_path: Path, kind: JobKind, record: dict[str, Any]) -> str:
    """The single problem of a file whose line 2 is `record` (line 1 is valid)."""
    valid = (
        {"id": "ok", "prompt": "hi"} if isinstance(kind, ChatKind) else {"id": "ok", "text": "hi"}
    )
    problems = _problems(tmp_path, kind, valid, record)
    assert len(problems) == 1, problems
    text = str(problems[0])
    assert text.startswith(f"{tmp_path / 'jobs.jsonl'} line 2"), text
    return text


CHAT = ChatKind(ChatOptions())
EMBED = EmbeddingsKind(EmbeddingOptions())


@pytest.mark.parametrize(
    ("record", "field", "message"),
    [
        ({"id": "", "prompt": "x"}, "id", "must not be empty"),
        ({"id": 1.5, "prompt": "x"}, "id", "must be a string or an integer, got number"),
        ({"id": True, "prompt": "x"}, "id", "got boolean"),
        ({"id": "a"}, "prompt", "missing: give 'messages' or 'prompt'"),
        ({"id": "a", "prompt": ""}, "prompt", "must not be empty"),
        ({"id": "a", "prompt": 5}, "prompt", "must be a string, got number"),
        ({"id": "a", "prompt": "x", "temperature": 0}, "temperature", "greater than 0"),
        ({"id": "a", "prompt": "x", "temperature": "hot"}, "temperature", "must be a number"),
        ({"id": "a", "prompt": "x", "top_p": 1.5}, "top_p", "at most 1"),
        ({"id": "a", "prompt": "x", "top_p": -0.1}, "top_p", "at least 0"),
        ({"id": "a", "prompt": "x", "max_tokens": 0}, "max_tokens", "at least 1"),
        ({"id": "a", "prompt": "x", "max_tokens": 2.5}, "max_tokens", "must be an integer"),
        ({"id": "a", "prompt": "x", "repetition_penalty": 0}, "repetition_penalty", "greater"),
        ({"id": "a", "prompt": "x", "model": ""}, "model", "must not be empty"),
        ({"id": "a", "prompt": "x", "temprature": 1}, "temprature", "unknown field"),
        ({"id": "a", "messages": []}, "messages", "non-empty array, got an empty array"),
        ({"id": "a", "messages": "hi"}, "messages", "non-empty array, got string"),
        ({"id": "a", "messages": ["hi"]}, "messages[0]", "must be an object"),
        (
            {"id": "a", "messages": [{"role": "bot", "content": "x"}]},
            "messages[0].role",
            "must be one of system, user, assistant, function",
        ),
        (
            {"id": "a", "messages": [{"role": "user", "content": 1}]},
            "messages[0].content",
            "must be a string, got number",
        ),
        (
            {"id": "a", "messages": [{"role": "user", "content": "x", "colour": 1}]},
            "messages[0].colour",
            "unknown message field",
        ),
        (
            {"id": "a", "messages": [{"role": "user", "content": "x"}], "prompt": "y"},
            "prompt",
            "either 'messages' or the 'prompt' shorthand",
        ),
        (
            {"id": "a", "messages": [{"role": "user", "content": "x"}], "system": "y"},
            "system",
            "put a system message in 'messages'",
        ),
        ({"id": "a", "prompt": "x", "functions": {}}, "functions", "must be an array of objects"),
        ({"id": "a", "prompt": "x", "functions": [3]}, "functions[0]", "must be an object"),
        ({"id": "a", "prompt": "x", "functions": [{}]}, "functions[0].name", "non-empty string"),
        (
            {"id": "a", "prompt": "x", "functions": [{"name": "f", "parameters": []}]},
            "functions[0].parameters",
            "must be an object",
        ),
        ({"id": "a", "prompt": "x", "function_call": "always"}, "function_call", '"auto"'),
        ({"id": "a", "prompt": "x", "function_call": {"nom": "f"}}, "function_call", '"auto"'),
    ],
)
def test_chat_rule_names_file_line_and_field(
    tmp_path: Path, record: dict[str, Any], field: str, message: str
) -> None:
    text = _only_problem(tmp_path, CHAT, record)
    assert f"field '{field}'" in text
    assert message in text


@pytest.mark.parametrize(
    ("record", "field", "message"),
    [
        ({"id": "a"}, "text", "missing"),
        ({"id": "a", "text": ""}, "text", "must not be empty"),
        ({"id": "a", "text": "   "}, "text", "must not be empty"),
        ({"id": "a", "text": ["x"]}, "text", "must be a string, got array"),
        ({"id": "a", "text": "x", "model": "Word2Vec"}, "model", "unknown embeddings model"),
        ({"id": "a", "text": "x", "model": "EmbeddingsGigaR"}, "model", "2560-dimensional"),
        ({"id": "a", "text": "x", "txt": "y"}, "txt", "unknown field"),
    ],
)
def test_embedding_rule_names_file_line_and_field(
    tmp_path: Path, record: dict[str, Any], field: str, message: str
) -> None:
    text = _only_problem(tmp_path, EMBED, record)
    assert f"field '{field}'" in text
    assert message in text


def test_every_problem_of_a_line_is_reported_together(tmp_path: Path) -> None:
    problems = _problems(tmp_path, CHAT, {"id": "", "prompt": "x", "top_p": 2, "max_tokens": -1})
    assert sorted(str(p.field) for p in problems) == ["id", "max_tokens", "top_p"]


def test_null_fields_count_as_absent(tmp_path: Path) -> None:
    assert _problems(tmp_path, CHAT, {"id": None, "prompt": "x", "temperature": None}) == []


def test_integer_ids_are_accepted(tmp_path: Path) -> None:
    assert _problems(tmp_path, CHAT, {"id": 7, "prompt": "x"}) == []


def test_embedding_model_of_the_same_dimension_is_allowed_per_line(tmp_path: Path) -> None:
    assert _problems(tmp_path, EMBED, {"text": "x", "model": "Embeddings-2"}) == []


def test_mapped_column_is_named_in_problems(tmp_path: Path) -> None:
    kind = EmbeddingsKind(EmbeddingOptions(text_column="body"))
    problems = _problems(tmp_path, kind, {"id": "a", "body": ""})
    assert [p.field for p in problems] == ["body"]


@pytest.mark.parametrize(
    "options",
    [
        ChatOptions(temperature=0),
        ChatOptions(top_p=2),
        ChatOptions(max_tokens=0),
        ChatOptions(repetition_penalty=-1),
        ChatOptions(prompt_column="a", text_column="b"),
    ],
)
def test_bad_chat_defaults_are_a_config_error(options: ChatOptions) -> None:
    with pytest.raises(ConfigError):
        ChatKind(options)


def test_unknown_embeddings_model_needs_its_dimension() -> None:
    with pytest.raises(ConfigError, match="embedding_dim"):
        EmbeddingsKind(EmbeddingOptions(model="Word2Vec"))
    options = EmbeddingOptions(model="Word2Vec", extra={"embedding_dim": 300})
    assert EmbeddingsKind(options).dim == 300


def test_prompt_column_is_refused_for_embeddings() -> None:
    with pytest.raises(ConfigError, match="--text-column"):
        kind_from_values("embed", {"prompt_column": "q"})
