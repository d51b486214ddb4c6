"""Reading job files: JSONL and Parquet streams, problems with locations, duplicate ids,
the input fingerprint, and read_jobs' handling of invalid records."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.errors import JobFileError
from jobs import readers
from jobs.base import Problem, SourceLocation
from jobs.chat import ChatKind, ChatOptions
from jobs.embeddings import EmbeddingOptions, EmbeddingsKind
from jobs.readers import content_fingerprint, iter_records, read_jobs, validate_jobs

EMBED = EmbeddingsKind(EmbeddingOptions())


def _jsonl(path: Path, *records: dict[str, Any]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def _parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_jsonl_records_carry_their_line_numbers_counting_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"text": "one"}\n\n   \n{"text": "two"}\n')
    records = list(iter_records(path))
    assert [(loc.number, loc.unit, rec) for loc, rec in records] == [
        (1, "line", {"text": "one"}),
        (4, "line", {"text": "two"}),
    ]


def test_jsonl_without_final_newline_and_with_bom_is_read(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "one"}\n{"text": "two"}')
    assert [rec for _, rec in iter_records(path)] == [{"text": "one"}, {"text": "two"}]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"text": "x"', "not valid JSON"),
        (b"[1, 2]", "expected a JSON object, got an array"),
        (b'"just text"', "expected a JSON object, got a string"),
        (b'{"text": "\xff\xfe"}', "not valid UTF-8 (byte 11 of the line)"),
    ],
)
def test_unreadable_line_is_a_problem_naming_file_and_line(
    tmp_path: Path, line: bytes, message: str
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"text": "fine"}\n' + line + b"\n")
    report = validate_jobs(path, EMBED)
    assert report.jobs == 1
    assert len(report.problems) == 1
    assert str(report.problems[0]).startswith(f"{path} line 2: {message}")


def test_missing_input_is_a_job_file_error(tmp_path: Path) -> None:
    with pytest.raises(JobFileError, match="no such file"):
        list(iter_records(tmp_path / "nope.jsonl"))


def test_parquet_rows_are_numbered_across_record_batches(tmp_path: Path) -> None:
    path = _parquet(tmp_path / "a.parquet", [{"text": f"t{i}"} for i in range(10)])
    records = list(iter_records(path, batch_rows=3))
    assert [loc.number for loc, _ in records] == list(range(1, 11))
    assert all(loc.unit == "row" and loc.file == str(path) for loc, _ in records)


def test_parquet_is_projected_onto_the_kinds_columns(tmp_path: Path) -> None:
    path = _parquet(tmp_path / "a.parquet", [{"id": "a", "text": "x", "source": "web"}])
    assert [rec for _, rec in iter_records(path, columns=["id", "text"])] == [
        {"id": "a", "text": "x"}
    ]
    assert validate_jobs(path, EMBED).ok


def test_column_mapping_reads_any_parquet_file(tmp_path: Path) -> None:
    path = _parquet(tmp_path / "a.parquet", [{"doc": 10, "body": "hello", "extra": 1.0}])
    kind = EmbeddingsKind(EmbeddingOptions(id_column="doc", text_column="body"))
    (job,) = read_jobs(path, kind)
    assert job.id == "10"
    assert job.request == {"model": "Embeddings", "text": "hello"}


def test_prompt_column_maps_chat_shorthand(tmp_path: Path) -> None:
    path = _parquet(tmp_path / "a.parquet", [{"question": "why?"}])
    (job,) = read_jobs(path, ChatKind(ChatOptions(prompt_column="question")))
    assert job.request["messages"] == [{"role": "user", "content": "why?"}]


def test_parquet_nested_messages_and_metadata_are_read(tmp_path: Path) -> None:
    rows = [
        {
            "id": "a",
            "messages": [{"role": "user", "content": "hi", "name": None}],
            "metadata": {"n": 1},
        }
    ]
    (job,) = read_jobs(_parquet(tmp_path / "a.parquet", rows), ChatKind(ChatOptions()))
    assert job.request["messages"] == [{"role": "user", "content": "hi"}]
    assert job.metadata == {"n": 1}


def test_directory_of_parquet_reads_files_in_name_order(tmp_path: Path) -> None:
    folder = tmp_path / "parts"
    folder.mkdir()
    _parquet(folder / "b.parquet", [{"text": "b1"}])
    _parquet(folder / "a.parquet", [{"text": "a1"}, {"text": "a2"}])
    (folder / "_SUCCESS").write_bytes(b"")
    (folder / ".a.parquet.crc").write_bytes(b"")
    records = list(iter_records(folder))
    assert [(Path(loc.file).name, loc.number, rec["text"]) for loc, rec in records] == [
        ("a.parquet", 1, "a1"),
        ("a.parquet", 2, "a2"),
        ("b.parquet", 1, "b1"),
    ]


def test_directory_rows_without_ids_get_file_qualified_ids(tmp_path: Path) -> None:
    folder = tmp_path / "parts"
    folder.mkdir()
    _parquet(folder / "a.parquet", [{"text": "x"}])
    _parquet(folder / "b.parquet", [{"text": "y"}])
    assert [job.id for job in read_jobs(folder, EMBED)] == ["a.parquet:1", "b.parquet:1"]
    assert validate_jobs(folder, EMBED).ok


def test_empty_directory_is_a_job_file_error(tmp_path: Path) -> None:
    with pytest.raises(JobFileError, match=r"directory has no job files"):
        list(iter_records(tmp_path))


def test_not_a_parquet_file_is_a_job_file_error(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    path.write_text("hello")
    with pytest.raises(JobFileError, match="not a readable Parquet file"):
        list(iter_records(path))


def test_jsonl_lines_without_id_use_the_line_number(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"text": "a"}\n\n{"text": "b"}\n')
    assert [job.id for job in read_jobs(path, EMBED)] == ["1", "3"]


def test_duplicate_ids_are_reported_with_both_lines(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "a.jsonl",
        {"id": "x", "text": "1"},
        {"id": "y", "text": "2"},
        {"id": "x", "text": "3"},
    )
    report = validate_jobs(path, EMBED)
    assert report.jobs == 2
    assert [str(p) for p in report.problems] == [
        f"{path} line 3, field 'id': duplicate id 'x' (first at {path} line 1)"
    ]


def test_integer_and_string_ids_that_read_the_same_are_duplicates(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "a.jsonl", {"id": 5, "text": "1"}, {"id": "5", "text": "2"})
    assert validate_jobs(path, EMBED).problem_count == 1


def test_duplicates_are_found_among_many_rows(tmp_path: Path) -> None:
    rows = [{"id": f"doc-{i}", "text": "t"} for i in range(50_000)]
    rows[30_000]["id"] = "doc-17"
    rows[49_999]["id"] = "doc-17"
    rows[40_000]["id"] = "doc-2"
    report = validate_jobs(_parquet(tmp_path / "many.parquet", rows), EMBED)
    assert report.jobs == 50_000 - 3
    assert [(p.location.number, p.message) for p in report.duplicates] == [
        (30_001, f"duplicate id 'doc-17' (first at {tmp_path / 'many.parquet'} row 18)"),
        (40_001, f"duplicate id 'doc-2' (first at {tmp_path / 'many.parquet'} row 3)"),
        (50_000, f"duplicate id 'doc-17' (first at {tmp_path / 'many.parquet'} row 18)"),
    ]


def test_hash_collisions_of_different_ids_are_not_duplicates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readers, "id_hash", lambda job_id: 42)
    path = _jsonl(tmp_path / "a.jsonl", *({"id": str(i), "text": "t"} for i in range(5)))
    report = validate_jobs(path, EMBED)
    assert report.ok
    assert report.jobs == 5


def test_validation_memory_stays_small_for_many_jobs(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    with path.open("wb") as handle:
        for i in range(100_000):
            handle.write(orjson.dumps({"id": f"job-{i}", "text": f"text number {i}"}) + b"\n")
    tracemalloc.start()
    try:
        report = validate_jobs(path, EMBED)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.jobs == 100_000
    # Ids alone would take ~7 MB as a set of strings; the hashes take 0.8 MB.
    assert peak < 3_000_000


def test_problems_are_capped_but_counted(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "a.jsonl", *({"id": str(i), "text": ""} for i in range(30)))
    report = validate_jobs(path, EMBED, max_problems=5)
    assert len(report.problems) == 5
    assert report.problem_count == 30
    with pytest.raises(JobFileError, match="and 29 more problems") as caught:
        report.raise_for_problems()
    assert len(caught.value.problems) == 5


def test_fingerprint_follows_content(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "a.jsonl", {"text": "one"})
    first = content_fingerprint(path)
    assert content_fingerprint(path) == first
    assert validate_jobs(path, EMBED).fingerprint == first
    _jsonl(path, {"text": "two"})
    assert content_fingerprint(path) != first


class _Stop(Exception):
    pass


def _stop() -> None:
    raise _Stop


def test_an_interrupt_stops_validation_within_a_few_hundred_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _jsonl(tmp_path / "a.jsonl", *({"id": str(i), "text": "t"} for i in range(10_000)))
    read = 0
    outcomes = readers.iter_outcomes

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal read
        for outcome in outcomes(*args, **kwargs):
            read += 1
            yield outcome

    monkeypatch.setattr(readers, "iter_outcomes", counted)
    with pytest.raises(_Stop):
        validate_jobs(path, EMBED, interrupt_check=_stop)
    assert 0 < read <= 512


def test_the_fingerprint_checks_for_an_interrupt_before_each_mib(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(b"x" * (3 << 20))
    calls = 0

    def count() -> None:
        nonlocal calls
        calls += 1

    first = content_fingerprint(path, interrupt_check=count)
    assert calls == 3 and first == content_fingerprint(path)
    with pytest.raises(_Stop):
        content_fingerprint(path, interrupt_check=_stop)


def test_read_jobs_stops_at_the_first_invalid_record(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "a.jsonl", {"text": "ok"}, {"text": ""}, {"text": "later"})
    seen: list[Problem] = []
    jobs = read_jobs(path, EMBED, on_problem=seen.append)
    assert next(jobs).id == "1"
    with pytest.raises(JobFileError, match="line 2, field 'text': must not be empty"):
        next(jobs)
    assert len(seen) == 1


def test_read_jobs_skips_invalid_records_and_reports_them(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "a.jsonl", {"text": "ok"}, {"text": ""}, {"text": "later"})
    seen: list[Problem] = []
    ids = [job.id for job in read_jobs(path, EMBED, skip_invalid=True, on_problem=seen.append)]
    assert ids == ["1", "3"]
    assert [p.location for p in seen] == [SourceLocation(str(path), 2, "line")]


def test_read_jobs_skips_duplicates_a_validation_found(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "a.jsonl", {"id": "a", "text": "1"}, {"id": "a", "text": "2"})
    report = validate_jobs(path, EMBED)
    seen: list[Problem] = []
    jobs = list(
        read_jobs(path, EMBED, skip_invalid=True, on_problem=seen.append, exclude=report.duplicates)
    )
    assert [job.request["text"] for job in jobs] == ["1"]
    assert seen == report.duplicates
