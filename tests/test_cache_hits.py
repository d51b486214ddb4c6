"""Cache hits as columns: the table `cached_batch` builds from stored vectors is, schema and
bytes, the one the row-by-row path and a sent answer give; and what falls back to rows."""

from __future__ import annotations

import random
import struct
from array import array
from pathlib import Path

import pyarrow as pa

from batch.api_types import Usage
from batch.changes import ChangeFilter
from batch.checkpoint import Checkpoint
from batch.outcomes import answered_batch, cached_batch, reused_batch, with_cached_column
from batch.reuse import AnswerReuse
from batch.writer import Outcomes, rows_to_table
from jobs.base import Job, JobResult, SourceLocation
from jobs.embeddings import EmbeddingsKind


def job(job_id: str, text: str, metadata: object = None) -> Job:
    body = {"model": "Embeddings", "text": text}
    return Job(job_id, SourceLocation("t.jsonl", 1), body, metadata=metadata)


def awkward_floats(seed: int, n: int = 1024) -> array[float]:
    """float32 values a round trip through Python floats or text could spoil: subnormals,
    negative zero, the extremes, and random bit patterns (NaNs left out: they never equal)."""
    rng = random.Random(seed)
    special = [0.0, -0.0, 1.4e-45, -1.4e-45, 3.4028235e38, -3.4028235e38, 1.1754944e-38]
    values = array("f", special)
    while len(values) < n:
        (value,) = struct.unpack("<f", rng.getrandbits(32).to_bytes(4, "little"))
        if value == value:
            values.append(value)
    return values


def sent(kind: EmbeddingsKind, j: Job, seed: int) -> JobResult:
    row = {
        "embedding": awkward_floats(seed),
        "prompt_tokens": 10 + seed,
        "model": "Embeddings:1.2",
        "metadata": None if j.metadata is None else '{"n":1}',
    }
    return JobResult(j, row, Usage(prompt_tokens=10 + seed), "Embeddings:1.2")


def test_cached_vectors_round_trip_bit_exactly_into_the_sent_answers_columns(
    tmp_path: Path,
) -> None:
    kind = EmbeddingsKind()
    schema = with_cached_column(kind.result_schema())
    jobs = [job(f"j{i}", f"text {i}", {"n": 1} if i % 2 else None) for i in range(40)]
    answers = [sent(kind, j, i) for i, j in enumerate(jobs)]
    first = AnswerReuse.open(kind, tmp_path / "out1", cache_dir=tmp_path / "cache")
    first.keep(answers)
    first.close(finished=True)
    second = AnswerReuse.open(kind, tmp_path / "out2", cache_dir=tmp_path / "cache")
    found = second.lookup(jobs)
    second.close(finished=True)
    assert len(found.hits) == 40 and not found.to_send

    hits = cached_batch(kind, found.hits, schema)
    assert not hits.results and len(hits.tables) == 1 and not hits.usage
    table = hits.tables[0]
    answered = rows_to_table(answered_batch(answers, attempts=1, latency=0.5).results, schema)
    assert table.schema.equals(answered.schema, check_metadata=True)
    for name in ("id", "embedding", "prompt_tokens", "model", "metadata"):
        assert table.column(name).equals(answered.column(name)), name
    sent_bytes = b"".join(a.row["embedding"].tobytes() for a in answers)
    stored = table.column("embedding").combine_chunks().flatten()
    assert stored.buffers()[1].to_pybytes()[: len(sent_bytes)] == sent_bytes
    assert table.column("cached").to_pylist() == [True] * 40
    assert table.column("attempts").to_pylist() == [0] * 40
    assert table.column("latency_ms").to_pylist() == [0.0] * 40

    rows = rows_to_table(reused_batch(found.cached, cached=True).results, schema)
    assert table.equals(rows, check_metadata=True)


def test_a_payload_of_another_size_or_kept_columns_go_row_by_row(tmp_path: Path) -> None:
    kind = EmbeddingsKind()
    schema = with_cached_column(kind.result_schema())
    reuse = AnswerReuse.open(kind, tmp_path / "out", cache_dir=tmp_path / "cache")
    small = sent(kind, job("s", "short"), 1)
    small.row["embedding"] = awkward_floats(1, n=256)
    reuse.keep([small, sent(kind, job("f", "full"), 2)])
    found = reuse.lookup([job("s", "short"), job("f", "full")])
    kept = reuse.lookup([Job("k", SourceLocation("t", 1), job("", "full").request, kept={"a": 1})])
    reuse.close(finished=True)
    assert kind.cached_columns([j for j, _ in found.hits], [a for _, a in found.hits]) is None
    mixed = cached_batch(kind, found.hits, schema)
    assert not mixed.tables and [r["id"] for r in mixed.results] == ["s", "f"]
    with_kept = cached_batch(kind, kept.hits, schema)
    assert not with_kept.tables and with_kept.results[0]["a"] == 1


def test_changed_since_drops_unchanged_hits_given_as_a_table(tmp_path: Path) -> None:
    kind = EmbeddingsKind()
    schema = with_cached_column(kind.result_schema())
    jobs = [job("same", "a"), job("edited", "b"), job("new", "c")]
    answers = [sent(kind, j, i) for i, j in enumerate(jobs)]
    previous = answered_batch(answers[:2], attempts=1, latency=0.1).results
    previous[1]["embedding"] = awkward_floats(99)
    prev = tmp_path / "prev"
    checkpoint = Checkpoint.open(
        prev,
        kind="embed",
        input_path="x",
        input_fingerprint="f",
        settings=kind.answer_settings(),
        total_jobs=2,
    )
    previous = [{k: v for k, v in row.items() if k != "cached"} for row in previous]
    checkpoint.commit(rows_to_table(previous, kind.result_schema()), None, {})
    reuse = AnswerReuse.open(kind, tmp_path / "out", cache_dir=tmp_path / "cache")
    reuse.keep(answers)
    found = reuse.lookup(jobs)
    reuse.close(finished=True)
    out = cached_batch(kind, found.hits, schema)
    changes = ChangeFilter.open(prev, kind.result_schema(), "embed")
    assert changes.drop_unchanged(out) == 1
    assert out.result_count == 2
    assert pa.concat_tables(out.tables).column("id").to_pylist() == ["edited", "new"]


def test_the_writer_commits_rows_and_tables_in_one_part(tmp_path: Path) -> None:
    kind = EmbeddingsKind()
    schema = with_cached_column(kind.result_schema())
    answers = [sent(kind, job(f"j{i}", f"t{i}"), i) for i in range(3)]
    reuse = AnswerReuse.open(kind, tmp_path / "o", cache_dir=tmp_path / "cache")
    reuse.keep(answers[:2])
    found = reuse.lookup([a.job for a in answers[:2]])
    reuse.close(finished=True)
    hits = cached_batch(kind, found.hits, schema)
    fresh = answered_batch(answers[2:], attempts=1, latency=0.2)
    both = Outcomes(results=fresh.results, tables=hits.tables)
    assert both.result_count == 3
    from batch.writer import PartWriter

    checkpoint = Checkpoint.open(
        tmp_path / "out",
        kind="embed",
        input_path="x",
        input_fingerprint="f",
        settings=kind.answer_settings(),
        total_jobs=3,
    )
    writer = PartWriter(checkpoint, schema)
    writer.add(both)
    assert writer.buffered == 3
    committed: list[object] = []
    writer._commit(committed)  # the writer thread's commit, run here
    assert writer.buffered == 0 and checkpoint.totals.succeeded == 3
    part = pa.parquet.read_table(tmp_path / "out" / "results" / "part-00001.parquet")
    assert sorted(part.column("id").to_pylist()) == ["j0", "j1", "j2"]
    assert part.schema.remove_metadata().equals(schema)


def test_parts_dictionary_encode_every_column_but_the_vectors(tmp_path: Path) -> None:
    kind = EmbeddingsKind()
    schema = with_cached_column(kind.result_schema())
    answers = [sent(kind, job(f"j{i}", f"t{i}"), i) for i in range(4)]
    checkpoint = Checkpoint.open(
        tmp_path / "out",
        kind="embed",
        input_path="x",
        input_fingerprint="f",
        settings=kind.answer_settings(),
        total_jobs=4,
    )
    table = rows_to_table(answered_batch(answers, attempts=1, latency=0.2).results, schema)
    checkpoint.commit(table, None, {})
    meta = pa.parquet.ParquetFile(tmp_path / "out" / "results" / "part-00001.parquet").metadata
    encodings = {
        meta.schema.column(i).path: meta.row_group(0).column(i).encodings
        for i in range(meta.num_columns)
    }
    vectors = [path for path in encodings if path.startswith("embedding")]
    assert vectors and all("RLE_DICTIONARY" not in encodings[path] for path in vectors)
    assert "RLE_DICTIONARY" in encodings["model"]
    written = pa.parquet.read_table(tmp_path / "out" / "results" / "part-00001.parquet")
    assert written.column("embedding").equals(table.column("embedding"))
