"""The answer journal of an output directory: durable answers in arrival order, drained in
pages and dropped once a Parquet part holds them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from batch.cache import JOURNAL_FILE, AnswerJournal, CachedAnswer, chat_from_payload, chat_payload


def answer(i: int) -> CachedAnswer:
    fields: dict[str, object] = {"content": f"answer {i}", "finish_reason": "stop"}
    return CachedAnswer(chat_payload(fields), "GigaChat:2.0.28.2", 1_700_000_000.0 + i, 10 + i)


def job(i: int) -> bytes:
    return f"job-{i}".encode()


def test_the_journal_lives_in_the_output_directory(tmp_path: Path) -> None:
    with AnswerJournal(tmp_path) as journal:
        journal.append_many([(job(1), answer(1))])
    assert (tmp_path / JOURNAL_FILE).exists()


def test_drain_gives_entries_in_arrival_order_page_by_page(tmp_path: Path) -> None:
    with AnswerJournal(tmp_path) as journal:
        for i in range(25):
            journal.append_many([(job(i), answer(i))])
        journal.flush()
        first = journal.drain(limit=10)
        second = journal.drain(after=first[-1].seq, limit=10)
        rest = journal.drain(after=second[-1].seq, limit=10)
    drained = [e.key for e in [*first, *second, *rest]]
    assert drained == [job(i) for i in range(25)]
    assert len(rest) == 5
    assert chat_from_payload(first[0].answer.payload)["content"] == "answer 0"


def test_delete_up_to_drops_what_a_committed_part_holds(tmp_path: Path) -> None:
    with AnswerJournal(tmp_path) as journal:
        journal.append_many([(job(i), answer(i)) for i in range(10)])
        journal.flush()
        committed = journal.drain(limit=6)
        assert journal.delete_up_to(committed[-1].seq) == 6
        assert [e.key for e in journal.drain()] == [job(i) for i in range(6, 10)]
        assert len(journal) == 4


def test_delete_many_drops_the_ids_a_part_holds_even_if_not_yet_committed(
    tmp_path: Path,
) -> None:
    with AnswerJournal(tmp_path, commit_interval=30) as journal:
        journal.append_many([(job(i), answer(i)) for i in range(5)])
        assert journal.delete_many([job(1), job(3), job(99)]) == 2
        assert [e.key for e in journal.drain()] == [job(0), job(2), job(4)]


def test_a_reopened_journal_finds_answers_by_key_and_keeps_counting_up(tmp_path: Path) -> None:
    with AnswerJournal(tmp_path) as journal:
        journal.append_many([(job(i), answer(i)) for i in range(3)])
        journal.flush()
        last = journal.drain()[-1].seq
        journal.delete_up_to(last)
        journal.append_many([(job(3), answer(3))])
    with AnswerJournal(tmp_path) as journal:
        assert journal.get_many([job(0), job(3)]) == {job(3): answer(3)}
        journal.append_many([(job(4), answer(4))])
        journal.flush()
        seqs = [e.seq for e in journal.drain()]
    # Seqs are never reused, even after deletes: `after` stays a safe cursor.
    assert seqs == sorted(seqs)
    assert seqs[0] > last


# Journals one answer, waits, then kills itself: no flush, no close.
_APPEND_AND_DIE = """
import os, signal, sys, time
from pathlib import Path
from batch.cache import AnswerJournal, CachedAnswer
journal = AnswerJournal(Path(sys.argv[1]), commit_interval=float(sys.argv[2]))
journal.append_many([(b"job-1", CachedAnswer(b"v", "m", 1.0, 1))])
time.sleep(0.25)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize(("interval", "durable"), [(0.1, True), (30.0, False)])
def test_an_answer_is_journalled_within_the_interval_and_survives_kill_9(
    tmp_path: Path, interval: float, durable: bool
) -> None:
    subprocess.run([sys.executable, "-c", _APPEND_AND_DIE, str(tmp_path), str(interval)])
    with AnswerJournal(tmp_path) as journal:
        assert (b"job-1" in journal.get_many([b"job-1"])) is durable
