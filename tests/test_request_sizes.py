"""Requests that cannot fit are problems at validation: over the API's 20 MB, a chat prompt
certainly over its model's context window, an embedding text certainly over its input limit."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.chat import ChatKind, ChatOptions
from jobs.embeddings import EmbeddingOptions, EmbeddingsKind
from jobs.readers import read_jobs, validate_jobs
from jobs.validation import MAX_CHARS_PER_TOKEN, MAX_REQUEST_BYTES, fewest_tokens

CHAT = ChatKind(ChatOptions())
EMBED = EmbeddingsKind(EmbeddingOptions())


def _jsonl(path: Path, *records: dict[str, Any]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def test_fewest_tokens_counts_no_whitespace_and_rounds_down() -> None:
    assert fewest_tokens(["a" * (MAX_CHARS_PER_TOKEN * 3 + 5)]) == 3
    assert fewest_tokens([" " * 10_000]) == 0
    assert fewest_tokens(["short"] * 1000) == 0


def test_chat_prompt_certainly_over_the_context_window_is_a_problem(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "jobs.jsonl",
        {"id": "ok", "prompt": "fine"},
        {"id": "huge", "prompt": "word " * 1_000_000},
    )
    report = validate_jobs(path, CHAT)
    assert report.jobs == 1
    assert [str(p) for p in report.problems] == [
        f"{path} line 2: at least 62500 tokens by length alone, over the 32768-token context "
        "window of GigaChat, so it can never be sent: shorten it"
    ]


def test_a_long_prompt_that_might_fit_is_left_alone(tmp_path: Path) -> None:
    # 1.5 M characters could be 23,000 tokens: under GigaChat's window, so not "certainly".
    path = _jsonl(tmp_path / "jobs.jsonl", {"prompt": "x" * 1_500_000})
    assert validate_jobs(path, CHAT).ok


def test_larger_context_models_and_unknown_models_get_their_window(tmp_path: Path) -> None:
    prompt = "y" * 5_000_000  # at least 78,125 tokens
    path = _jsonl(
        tmp_path / "jobs.jsonl",
        {"id": "small", "prompt": prompt},
        {"id": "large", "prompt": prompt, "model": "GigaChat-2-Max"},
        {"id": "unknown", "prompt": prompt, "model": "GigaChat-Next"},
    )
    report = validate_jobs(path, CHAT)
    assert [p.location.number for p in report.problems] == [1]


def test_embedding_text_certainly_over_its_input_limit_names_the_text_field(
    tmp_path: Path,
) -> None:
    path = _jsonl(tmp_path / "jobs.jsonl", {"id": "a", "body": "z" * 40_000})
    kind = EmbeddingsKind(EmbeddingOptions(text_column="body"))
    report = validate_jobs(path, kind)
    assert [str(p) for p in report.problems] == [
        f"{path} line 1, field 'body': at least 625 tokens by length alone, over the "
        "512-token input limit of Embeddings, so it can never be sent: shorten it"
    ]


def test_embedding_text_over_the_limit_is_fine_when_it_will_be_truncated(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "jobs.jsonl", {"text": "z" * 40_000})
    assert validate_jobs(path, EmbeddingsKind(EmbeddingOptions(on_long_text="truncate"))).ok


def test_a_parquet_row_over_20_mb_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "jobs.parquet"
    text = "q " * (MAX_REQUEST_BYTES // 2 + 10)
    pq.write_table(
        pa.Table.from_pylist([{"id": "big", "text": text}, {"id": "ok", "text": "x"}]), path
    )
    kind = EmbeddingsKind(EmbeddingOptions(on_long_text="truncate"))
    report = validate_jobs(path, kind)
    assert [p.location.number for p in report.problems] == [1]
    assert "over the API's 20.0 MB limit" in report.problems[0].message
    assert [job.id for job in read_jobs(path, kind, skip_invalid=True)] == ["ok"]


def test_a_50_mb_line_is_a_problem_read_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    with path.open("wb") as f:
        f.write(orjson.dumps({"id": "a", "prompt": "before"}) + b"\n")
        f.write(b'{"id": "b", "prompt": "')
        for _ in range(50):
            f.write(b"w" * (1024 * 1024))
        f.write(b'"}\n')
        f.write(orjson.dumps({"id": "c", "prompt": "after"}) + b"\n")
    tracemalloc.start()
    report = validate_jobs(path, CHAT)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert report.jobs == 2
    assert [str(p) for p in report.problems] == [
        f"{path} line 2: the line is over 20.0 MB, the API's request limit, so it can never "
        "be sent: split or shorten it"
    ]
    assert peak < 30 * 1024 * 1024
