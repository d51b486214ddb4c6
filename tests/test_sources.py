"""Inputs from anywhere a pipeline has them: compressed JSONL, directories of mixed files,
spooled streams, hints for JSON arrays and CSV, and a fingerprint of content, not path."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import threading
import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.checkpoint import Checkpoint
from batch.errors import JobFileError, RunRefused
from jobs.chat import ChatKind, ChatOptions
from jobs.embeddings import EmbeddingOptions, EmbeddingsKind
from jobs.readers import content_fingerprint, iter_records, read_jobs, validate_jobs
from jobs.sources import input_files, sniff, spool_stdin, spooled_input, temporary_spool

CHAT = ChatKind(ChatOptions())
EMBED = EmbeddingsKind(EmbeddingOptions())


def _lines(*records: dict[str, Any]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


def _zstd(path: Path, data: bytes) -> Path:
    with pa.output_stream(str(path), compression="zstd") as out:
        out.write(data)
    return path


def _prompts(path: Path) -> list[str]:
    return [job.request["messages"][-1]["content"] for job in read_jobs(path, CHAT)]


def test_gzip_jsonl_is_read_as_a_stream(tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl.gz"
    path.write_bytes(gzip.compress(_lines({"prompt": "a"}, {"prompt": "b"})))
    assert _prompts(path) == ["a", "b"]


def test_zstd_jsonl_is_read_as_a_stream(tmp_path: Path) -> None:
    path = _zstd(tmp_path / "jobs.jsonl.zst", _lines({"prompt": "a"}, {"prompt": "b"}))
    assert _prompts(path) == ["a", "b"]


def test_compression_is_told_by_content_not_name(tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_bytes(gzip.compress(_lines({"prompt": "a"})))
    assert sniff(path) == "gzip"
    assert _prompts(path) == ["a"]


def test_compressed_jsonl_reads_in_flat_memory(tmp_path: Path) -> None:
    record = orjson.dumps({"text": "x" * 200}) + b"\n"
    path = tmp_path / "big.jsonl.zst"
    with pa.output_stream(str(path), compression="zstd") as out:
        for _ in range(200):
            out.write(record * 500)  # 100,000 lines, about 21 MB decompressed
    tracemalloc.start()
    count = sum(1 for _ in iter_records(path))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 100_000
    assert peak < 4 * 1024 * 1024


def test_truncated_gzip_is_a_job_file_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(gzip.compress(_lines(*({"prompt": str(i)} for i in range(5000))))[:-200])
    with pytest.raises(JobFileError, match=r"cut\.jsonl\.gz"):
        list(iter_records(path))


def test_unsupported_compression_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl.bz2"
    path.write_bytes(b"BZh91AY&SY")
    with pytest.raises(JobFileError, match=r"bzip2-compressed.*gzip or zstd"):
        list(iter_records(path))


def test_directory_of_jsonl_files_is_read_in_name_order(tmp_path: Path) -> None:
    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "b.jsonl").write_bytes(_lines({"prompt": "b1"}))
    (folder / "a.jsonl.gz").write_bytes(gzip.compress(_lines({"prompt": "a1"}, {"prompt": "a2"})))
    assert _prompts(folder) == ["a1", "a2", "b1"]
    assert [job.id for job in read_jobs(folder, CHAT)] == [
        "a.jsonl.gz:1",
        "a.jsonl.gz:2",
        "b.jsonl:1",
    ]


def test_directory_mixing_jsonl_and_parquet_reads_all_of_them(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "2-more.jsonl").write_bytes(_lines({"id": "j", "text": "from jsonl"}))
    pq.write_table(pa.Table.from_pylist([{"id": "p", "text": "from parquet"}]), folder / "1.pq")
    jobs = list(read_jobs(folder, EMBED))
    assert [(job.id, job.request["text"]) for job in jobs] == [
        ("p", "from parquet"),
        ("j", "from jsonl"),
    ]
    assert [Path(job.location.file).name for job in jobs] == ["1.pq", "2-more.jsonl"]


def test_problems_in_a_directory_name_their_file(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.jsonl").write_bytes(_lines({"text": "fine"}))
    (folder / "b.jsonl").write_bytes(b'{"text": "fine"}\n{"txt": "typo"}\n')
    report = validate_jobs(folder, EMBED)
    assert [str(p) for p in report.problems] == [
        f"{folder / 'b.jsonl'} line 2, field 'txt': unknown field (this kind reads: "
        "id, metadata, model, text; --keep-columns txt copies it to the output)",
        f"{folder / 'b.jsonl'} line 2, field 'text': missing",
    ]


@pytest.mark.parametrize("name", ["notes.txt", "jobs.csv", "sub"])
def test_directory_entry_that_is_no_job_file_is_refused_by_name(tmp_path: Path, name: str) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.jsonl").write_bytes(_lines({"text": "x"}))
    if name == "sub":
        (folder / name).mkdir()
    else:
        (folder / name).write_text("id,text\n")
    with pytest.raises(JobFileError, match=f"{name}: "):
        input_files(folder)


def test_whole_file_json_array_gets_a_jq_hint(tmp_path: Path) -> None:
    path = tmp_path / "jobs.json"
    path.write_bytes(orjson.dumps([{"prompt": "a"}, {"prompt": "b"}]))
    report = validate_jobs(path, CHAT)
    assert report.problem_count == 1
    assert "this looks like a JSON array; JSONL needs one object per line" in str(
        report.problems[0]
    )
    assert f"jq -c '.[]' {path}" in str(report.problems[0])


def test_pretty_printed_json_array_gets_the_hint_on_its_first_line(tmp_path: Path) -> None:
    path = tmp_path / "jobs.json"
    path.write_bytes(orjson.dumps([{"prompt": "a"}], option=orjson.OPT_INDENT_2))
    report = validate_jobs(path, CHAT)
    assert "JSON array" in str(report.problems[0])
    assert all("JSON array" not in str(p) for p in report.problems[1:])


def test_csv_named_csv_is_refused_with_a_conversion_hint(tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text("id,prompt\n1,hello\n")
    with pytest.raises(JobFileError, match="CSV is not a job format: convert it to Parquet"):
        validate_jobs(path, CHAT)


def test_csv_under_another_name_gets_the_hint_on_line_1(tmp_path: Path) -> None:
    path = tmp_path / "jobs.txt"
    path.write_text("id,prompt\n1,hello\n")
    report = validate_jobs(path, CHAT)
    assert "this looks like CSV" in report.problems[0].message
    assert "CSV" not in report.problems[1].message


def test_spool_copies_a_stream_into_the_directory(tmp_path: Path) -> None:
    data = _lines(*({"prompt": str(i)} for i in range(1000)))
    spooled = spool_stdin(io.BytesIO(data), tmp_path / "input")
    assert spooled == tmp_path / "input" / "stdin.jsonl"
    assert spooled.read_bytes() == data
    assert [p.name for p in (tmp_path / "input").iterdir()] == ["stdin.jsonl"]


def test_spool_names_the_file_after_its_format(tmp_path: Path) -> None:
    spooled = spool_stdin(io.BytesIO(gzip.compress(_lines({"prompt": "a"}))), tmp_path)
    assert spooled.name == "stdin.jsonl.gz"
    assert _prompts(spooled) == ["a"]
    again = spool_stdin(io.BytesIO(_lines({"prompt": "b"})), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stdin.jsonl"]
    assert _prompts(again) == ["b"]


def test_spool_keeps_an_identical_previous_copy_untouched(tmp_path: Path) -> None:
    data = _lines({"prompt": "a"})
    first = spool_stdin(io.BytesIO(data), tmp_path)
    inode = first.stat().st_ino
    assert spool_stdin(io.BytesIO(data), tmp_path).stat().st_ino == inode


def test_spool_of_an_empty_stream_is_refused(tmp_path: Path) -> None:
    with pytest.raises(JobFileError, match="standard input is empty"):
        spool_stdin(io.BytesIO(b""), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_spool_memory_is_flat(tmp_path: Path) -> None:
    class Source(io.RawIOBase):
        """40 MB of job lines, produced as read."""

        def __init__(self) -> None:
            self.left = 40 * 1024 * 1024
            self.line = orjson.dumps({"prompt": "y" * 1000}) + b"\n"

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            n = min(len(buffer), self.left, len(self.line))
            buffer[:n] = self.line[:n]
            self.left -= n
            return n

    tracemalloc.start()
    spooled = spool_stdin(io.BufferedReader(Source()), tmp_path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert spooled.stat().st_size == 40 * 1024 * 1024
    assert peak < 4 * 1024 * 1024


def test_a_fifo_is_spooled_instead_of_read_twice(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    data = _lines({"prompt": "a"}, {"prompt": "b"})

    def feed() -> None:
        with fifo.open("wb") as out:
            out.write(data)

    writer = threading.Thread(target=feed)
    writer.start()
    spooled = spooled_input(fifo, tmp_path / "input")
    writer.join()
    assert spooled.read_bytes() == data
    assert validate_jobs(spooled, CHAT).jobs == 2


def test_a_fifo_given_to_the_readers_is_refused_not_consumed(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(JobFileError, match=r"not a regular file.*pass '-'"):
        validate_jobs(fifo, CHAT)


def test_temporary_spool_leaves_files_where_they_are(tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_bytes(_lines({"prompt": "a"}))
    with temporary_spool(path) as readable:
        assert readable == path


def test_fingerprint_ignores_where_the_input_is(tmp_path: Path) -> None:
    original = tmp_path / "a" / "jobs.jsonl"
    original.parent.mkdir()
    original.write_bytes(_lines({"prompt": "a"}))
    moved = tmp_path / "elsewhere" / "renamed.jsonl"
    moved.parent.mkdir()
    shutil.copy(original, moved)
    assert content_fingerprint(moved) == content_fingerprint(original)
    moved.write_bytes(_lines({"prompt": "b"}))
    assert content_fingerprint(moved) != content_fingerprint(original)


def test_directory_fingerprint_follows_file_names_not_the_directory(tmp_path: Path) -> None:
    one = tmp_path / "one"
    one.mkdir()
    (one / "a.jsonl").write_bytes(_lines({"prompt": "a"}))
    (one / "b.jsonl").write_bytes(_lines({"prompt": "b"}))
    two = tmp_path / "two"
    shutil.copytree(one, two)
    assert content_fingerprint(two) == content_fingerprint(one)
    # Ids of id-less rows are `<file>:<row>`: a renamed part is a different input.
    (two / "b.jsonl").rename(two / "c.jsonl")
    assert content_fingerprint(two) != content_fingerprint(one)


def test_an_output_fingerprinted_by_an_older_recipe_is_refused_with_that_reason(
    tmp_path: Path,
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(_lines({"prompt": "a"}))
    args: dict[str, Any] = {
        "kind": "chat",
        "input_path": str(jobs),
        "settings": {},
        "total_jobs": 1,
    }
    Checkpoint.open(tmp_path / "out", input_fingerprint="blake2b:0123456789abcdef", **args)
    with pytest.raises(RunRefused, match="made by an earlier gigabatch"):
        Checkpoint.open(tmp_path / "out", input_fingerprint=content_fingerprint(jobs), **args)
