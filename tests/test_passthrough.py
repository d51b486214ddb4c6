"""Pass-through columns (`--keep-columns`): input columns copied into results/ and failed/
with their types, read back by pandas, polars and duckdb; the user's id column kept under
its name; JSONL types inferred over the whole input; clear refusals."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import orjson
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from batch.emulator import RunningEmulator, profile, serve_emulator
from batch.errors import JobFileError
from batch.preparing import keep_spec
from jobs.chat import ChatKind, ChatOptions
from jobs.readers import read_jobs, validate_jobs

CLI = [sys.executable, "-c", "from batch.cli import main; main()"]


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    with serve_emulator(profile("fast", seed=5, answer_tokens_min=2, answer_tokens_max=4)) as emu:
        yield emu


def gigabatch(emu: RunningEmulator, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIGACHAT_")}
    env.update(emu.client_env())
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120)


def corpus(path: Path) -> Path:
    """A Parquet corpus with an integer id of the user's name and typed metadata columns;
    the second row names an unknown model, so it fails (404) and lands in failed/."""
    table = pa.table(
        {
            "doc_id": pa.array([101, 102, 103], pa.int64()),
            "body": ["first text", "second text", "third text"],
            "model": [None, "NoSuchModel", None],
            "lang": ["en", "ru", None],
            "year": pa.array([2021, 2022, 2023], pa.int16()),
            "seen": pa.array([datetime.datetime(2024, 5, 1, 8, 30)] * 3, pa.timestamp("ms")),
            "tags": pa.array([["a"], ["b", "c"], []], pa.list_(pa.string())),
            "url": ["u1", "u2", "u3"],
        }
    )
    pq.write_table(table, path)
    return path


def test_parquet_columns_keep_their_types_in_results_and_failed(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    proc = gigabatch(
        emulator,
        "run", str(corpus(tmp_path / "corpus.parquet")), "--out", str(out),
        "--id-column", "doc_id", "--prompt-column", "body",
        "--keep-columns", "lang,year", "--keep-columns", "seen,tags",
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    for sub, ids in (("results", {101, 103}), ("failed", {102})):
        table = ds.dataset(out / sub).to_table()
        assert table.schema.field("doc_id").type == pa.int64()
        assert table.schema.field("year").type == pa.int16()
        assert table.schema.field("seen").type == pa.timestamp("ms")
        assert table.schema.field("tags").type == pa.list_(pa.string())
        assert "url" not in table.schema.names  # only what was asked for
        assert set(table.column("doc_id").to_pylist()) == ids
        doc_ids = table.column("doc_id").to_pylist()
        assert table.column("id").to_pylist() == [str(i) for i in doc_ids]
    rows = ds.dataset(out / "results").to_table().to_pylist()
    assert {r["doc_id"]: (r["lang"], r["year"], r["tags"]) for r in rows} == {
        101: ("en", 2021, ["a"]),
        103: (None, 2023, []),
    }


def test_kept_columns_read_with_their_types_by_pandas_polars_and_duckdb(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    proc = gigabatch(
        emulator,
        "run", str(corpus(tmp_path / "corpus.parquet")), "--out", str(out),
        "--id-column", "doc_id", "--prompt-column", "body", "--keep-columns", "*",
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    frame = pd.read_parquet(out / "results")
    assert str(frame["doc_id"].dtype) == "int64" and str(frame["year"].dtype) == "int16"
    assert str(frame["seen"].dtype).startswith("datetime64")
    assert sorted(frame["url"]) == ["u1", "u3"]
    polars = pl.read_parquet(str(out / "failed" / "*.parquet"))
    assert polars.schema["year"] == pl.Int16 and polars.schema["tags"] == pl.List(pl.String)
    assert polars["doc_id"].to_list() == [102]
    described = duckdb.sql(f"describe select doc_id, year, seen from '{out}/results/*.parquet'")
    types = {row[0]: row[1] for row in described.fetchall()}
    assert types == {"doc_id": "BIGINT", "year": "SMALLINT", "seen": "TIMESTAMP"}
    count = duckdb.sql(f"select count(*), count(distinct id) from '{out}/results/*.parquet'")
    assert count.fetchall() == [(2, 2)]  # one row per id


def _jsonl(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def test_jsonl_types_are_inferred_over_the_whole_input(tmp_path: Path) -> None:
    jobs = _jsonl(
        tmp_path / "jobs.jsonl",
        [
            {"id": "a", "prompt": "x", "n": 1, "score": 1, "flag": True, "extra": {"k": 1}},
            *({"id": f"m{i}", "prompt": "x"} for i in range(3000)),  # past one part's rows
            {"id": "b", "prompt": "y", "n": 2, "score": 2.5, "flag": False, "extra": [1]},
        ],
    )
    kind = ChatKind(ChatOptions())
    report = validate_jobs(jobs, kind, keep=keep_spec(kind, ("*",)))
    assert report.kept is not None
    assert dict(zip(report.kept.schema.names, report.kept.schema.types, strict=True)) == {
        "n": pa.int64(),
        "score": pa.float64(),  # an int on one line, a float on another
        "flag": pa.bool_(),
        "extra": pa.string(),  # objects and arrays are kept as JSON text
    }
    rows = {job.id: job.kept for job in read_jobs(jobs, kind, keep=report.kept)}
    assert rows["a"] == {"n": 1, "score": 1, "flag": True, "extra": '{"k":1}'}
    assert rows["m0"] == {"n": None, "score": None, "flag": None, "extra": None}


def test_without_keep_columns_an_extra_jsonl_key_is_still_a_problem(tmp_path: Path) -> None:
    jobs = _jsonl(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "x", "lang": "en"}])
    kind = ChatKind(ChatOptions())
    assert not validate_jobs(jobs, kind, keep=keep_spec(kind, ())).ok
    assert validate_jobs(jobs, kind, keep=keep_spec(kind, ("lang",))).ok


def test_a_kept_column_in_no_record_is_refused_by_name(tmp_path: Path) -> None:
    jobs = _jsonl(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "x", "lang": "en"}])
    kind = ChatKind(ChatOptions())
    with pytest.raises(JobFileError, match="no record has 'lnag'"):
        validate_jobs(jobs, kind, keep=keep_spec(kind, ("lang,lnag",)))


def test_a_kept_column_named_like_an_output_column_is_stored_with_a_prefix(
    tmp_path: Path,
) -> None:
    jobs = _jsonl(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "x", "source": "crawl"}])
    kind = ChatKind(ChatOptions())
    report = validate_jobs(jobs, kind, keep=keep_spec(kind, ("source",)))
    assert report.kept is not None and report.kept.schema.names == ["input_source"]
    [job] = read_jobs(jobs, kind, keep=report.kept)
    assert job.kept == {"input_source": "crawl"}  # failed/ keeps its own `source` column


def test_resume_with_other_kept_columns_is_refused(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    jobs = _jsonl(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "x", "lang": "en", "n": 1}])
    out = str(tmp_path / "out")
    first = gigabatch(emulator, "run", str(jobs), "--out", out, "--keep-columns", "lang,n")
    assert first.returncode == 0, first.stderr
    again = gigabatch(emulator, "run", str(jobs), "--out", out, "--keep-columns", "lang,n,*")
    assert again.returncode == 2
    assert "keep_columns: ['lang', 'n'] -> ['lang', 'n', '*']" in again.stderr
