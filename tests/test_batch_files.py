"""Batch files from a job stream, the journal of batches, and task rows: the pure and local
parts of `--mode batches`."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from batch.api_types import BatchInfo
from batch.batch_files import FileBuilder, FileSource, repack
from batch.batch_journal import (
    ACTIVE,
    COLLECTED,
    SUBMITTING,
    BatchJournal,
    RecordedBatch,
    orphan_match,
    prepare_online_run,
    recorded_batches,
)
from batch.errors import RunRefused
from jobs.base import Job, SourceLocation
from jobs.chat import ChatKind, ChatOptions
from jobs.embeddings import EmbeddingOptions, EmbeddingsKind


def chat_jobs(kind: ChatKind, n: int) -> list[Job]:
    return [
        kind.job_from_record({"id": f"q{i}", "prompt": f"question {i}"}, SourceLocation("j", i))
        for i in range(n)
    ]


def test_files_hold_at_most_max_lines_tasks_with_ids_unique_per_file() -> None:
    kind = ChatKind(ChatOptions())
    source = FileSource(iter(chat_jobs(kind, 7)), kind, lambda job: False,
                        max_lines=3, max_bytes=10**6)
    files = []
    while (file := source.next_file()) is not None:
        files.append(file)
    assert [len(f.tasks) for f in files] == [3, 3, 1]
    first = [orjson.loads(line) for line in bytes(files[0].lines).splitlines()]
    nonce = files[0].nonce
    assert [t["id"] for t in first] == [f"{nonce}-1", f"{nonce}-2", f"{nonce}-3"]
    assert files[1].nonce != nonce
    assert first[0]["request"]["messages"] == [{"role": "user", "content": "question 0"}]
    assert list(files[1].job_ids().values()) == [["q3"], ["q4"], ["q5"]]
    assert {f.method for f in files} == {"chat_completions"}


def test_a_file_closes_before_a_line_would_cross_max_bytes() -> None:
    kind = ChatKind(ChatOptions())
    builder = FileBuilder(kind, max_lines=500, max_bytes=250)
    closed = [f for job in chat_jobs(kind, 5) for f in builder.add(kind.packer().add(job)[0])]
    last = builder.flush()
    assert last is not None
    assert all(len(f.lines) <= 250 for f in [*closed, last])
    assert sum(len(f.tasks) for f in [*closed, last]) == 5


def test_skipped_jobs_are_counted_and_not_sent() -> None:
    kind = ChatKind(ChatOptions())
    source = FileSource(iter(chat_jobs(kind, 4)), kind, lambda job: job.id in {"q1", "q2"},
                        max_lines=500, max_bytes=10**6)
    file = source.next_file()
    assert file is not None and source.next_file() is None
    assert list(file.job_ids().values()) == [["q0"], ["q3"]]
    assert source.skipped == 2


def test_embedding_tasks_pack_several_texts_and_repack_identically() -> None:
    kind = EmbeddingsKind(EmbeddingOptions(batch_size=3))
    jobs = [kind.job_from_record({"id": str(i), "text": f"text {i % 2}"}, SourceLocation("j", i))
            for i in range(5)]
    source = FileSource(iter(jobs), kind, lambda job: False, max_lines=500, max_bytes=10**6)
    file = source.next_file()
    assert file is not None
    assert [len(b.jobs) for b in file.tasks.values()] == [3, 2]
    first = file.tasks[f"{file.nonce}-1"]
    again = repack(kind, list(first.jobs))
    assert kind.request_body(again) == kind.request_body(first)
    assert again.payload == first.payload


def test_the_journal_records_a_batch_before_and_after_its_creation(tmp_path: Path) -> None:
    journal = BatchJournal.open(tmp_path)
    seq = journal.begin("chat_completions", {"t1": ["a"], "t2": ["b", "c"]})
    [pending] = journal.batches()
    assert (pending.state, pending.id, pending.jobs, pending.tasks) == (SUBMITTING, None, 3, 2)
    journal.created(seq, BatchInfo(id="b-1", method="chat_completions", status="created", total=2))
    journal.polled(seq, BatchInfo(id="b-1", method="chat_completions", status="in_progress",
                                  total=2, completed=1))
    journal.close()
    reopened = BatchJournal.open(tmp_path)
    [active] = reopened.batches((ACTIVE,))
    assert (active.id, active.server_status, active.completed) == ("b-1", "in_progress", 1)
    assert reopened.tasks(seq) == {"t1": ["a"], "t2": ["b", "c"]}
    reopened.collected(seq)
    assert [b.state for b in reopened.batches()] == [COLLECTED]
    reopened.close()


def test_a_forgotten_batch_leaves_no_trace(tmp_path: Path) -> None:
    journal = BatchJournal.open(tmp_path)
    seq = journal.begin("embedder", {"t1": ["a"]})
    journal.forget(seq)
    assert journal.batches() == []
    assert journal.tasks(seq) == {}
    journal.close()


def test_an_online_run_is_refused_while_batches_wait_and_restart_forgets_them(
    tmp_path: Path,
) -> None:
    journal = BatchJournal.open(tmp_path)
    seq = journal.begin("chat_completions", {"t1": ["a"]})
    journal.created(seq, BatchInfo(id="b-1", method="chat_completions", status="created", total=1))
    journal.close()
    with pytest.raises(RunRefused, match="1 batch\\(es\\) still waiting on the server"):
        prepare_online_run(tmp_path, restart=False)
    prepare_online_run(tmp_path, restart=True)
    assert recorded_batches(tmp_path) == []


def _orphan(recorded_at: float = 1000.0) -> RecordedBatch:
    return RecordedBatch(1, None, "chat_completions", SUBMITTING, 3, 3, recorded_at,
                         None, 0, 0, None)


def _listed(batch_id: str, *, total: int = 3, created_at: int = 1001,
            method: str = "chat_completions") -> BatchInfo:
    return BatchInfo(id=batch_id, method=method, status="created", total=total,
                     created_at=created_at)


def test_an_orphan_matches_the_one_unknown_batch_of_its_method_and_size() -> None:
    listed = [_listed("known"), _listed("other-size", total=4),
              _listed("other-method", method="embedder"), _listed("ours")]
    match = orphan_match(_orphan(), listed, known={"known"})
    assert match is not None and match.id == "ours"


def test_an_orphan_matches_nothing_when_two_batches_fit_or_none_is_recent() -> None:
    assert orphan_match(_orphan(), [_listed("a"), _listed("b")], known=set()) is None
    assert orphan_match(_orphan(), [_listed("old", created_at=10)], known=set()) is None
