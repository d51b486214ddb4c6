"""The answer cache: batched lookups, group commit, prune and info, clear errors."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import lmdb
import pytest

from batch.cache import (
    STORE_FILE,
    AnswerStore,
    CachedAnswer,
    cache_key,
    embedding_from_payload,
    embedding_material,
    embedding_payload,
)
from batch.errors import CacheUnavailable


def answer(
    i: int, *, created: float = 1_700_000_000.0, model: str = "Embeddings:1"
) -> CachedAnswer:
    return CachedAnswer(embedding_payload([float(i)] * 1024), model, created + i, 5 + i)


def key(i: int) -> bytes:
    return cache_key("embeddings", embedding_material("Embeddings", f"text {i}"))


def test_get_many_returns_the_hits_and_leaves_out_the_misses(tmp_path: Path) -> None:
    with AnswerStore(tmp_path) as store:
        store.put_many([(key(i), answer(i)) for i in range(10)])
        store.flush()
        found = store.get_many([key(3), key(42), key(7)])
    assert set(found) == {key(3), key(7)}
    assert found[key(3)] == answer(3)
    assert embedding_from_payload(found[key(7)].payload) == [7.0] * 1024


def test_an_answer_committed_while_a_lookup_runs_is_still_found(tmp_path: Path) -> None:
    """The commit thread may finish a commit between a lookup's read transaction and its
    look at what is pending: the answer must be in one or the other."""
    with AnswerStore(tmp_path, commit_interval=60.0) as store:
        store.put_many([(key(i), answer(i)) for i in range(3)])
        writes = store._writes
        pending = writes.pending

        def committed_meanwhile() -> list[tuple[bytes, CachedAnswer]]:
            writes.flush()  # the commit thread's commit, ending just now
            return pending()

        writes.pending = committed_meanwhile  # type: ignore[method-assign]
        found = store.get_many([key(0), key(1), key(2)])
    assert set(found) == {key(0), key(1), key(2)}


def test_one_lookup_may_ask_for_forty_thousand_keys(tmp_path: Path) -> None:
    with AnswerStore(tmp_path) as store:
        store.put_many([(key(i), answer(i)) for i in range(1200)])
        found = store.get_many([key(i) for i in range(40_000)])
    assert len(found) == 1200


def test_an_answer_not_yet_committed_is_already_a_hit(tmp_path: Path) -> None:
    with AnswerStore(tmp_path, commit_interval=60) as store:
        store.put_many([(key(1), answer(1))])
        assert store.get_many([key(1)]) == {key(1): answer(1)}


# Puts one answer, waits, then kills itself: no flush, no close.
_PUT_AND_DIE = """
import os, signal, sys, time
from pathlib import Path
from batch.cache import AnswerStore, CachedAnswer
store = AnswerStore(Path(sys.argv[1]), commit_interval=float(sys.argv[2]))
store.put_many([(b"k", CachedAnswer(b"v", "m", 1.0, 1))])
time.sleep(0.25)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize(("interval", "durable"), [(0.1, True), (30.0, False)])
def test_a_put_is_durable_within_the_commit_interval_without_a_flush(
    tmp_path: Path, interval: float, durable: bool
) -> None:
    subprocess.run([sys.executable, "-c", _PUT_AND_DIE, str(tmp_path), str(interval)])
    with AnswerStore(tmp_path) as store:
        assert (b"k" in store.get_many([b"k"])) is durable


def test_two_stores_on_one_directory_in_one_process_share_it(tmp_path: Path) -> None:
    with AnswerStore(tmp_path) as first, AnswerStore(tmp_path) as second:
        first.put_many([(key(1), answer(1))])
        first.flush()
        assert second.get_many([key(1)]) == {key(1): answer(1)}
    with AnswerStore(tmp_path) as again:
        assert again.info().entries == 1


def test_answers_survive_closing_and_reopening(tmp_path: Path) -> None:
    with AnswerStore(tmp_path) as store:
        store.put_many([(key(i), answer(i)) for i in range(5)])
    with AnswerStore(tmp_path) as store:
        assert len(store.get_many([key(i) for i in range(5)])) == 5


def test_a_newer_answer_replaces_the_older_one(tmp_path: Path) -> None:
    newer = CachedAnswer(b"new", "GigaChat:2", 2e9, 1)
    with AnswerStore(tmp_path) as store:
        store.put_many([(key(1), answer(1))])
        store.flush()
        store.put_many([(key(1), newer)])
        store.flush()
        assert store.get_many([key(1)]) == {key(1): newer}
        assert store.info().entries == 1


def test_info_counts_entries_by_model_with_oldest_and_newest(tmp_path: Path) -> None:
    with AnswerStore(tmp_path) as store:
        store.put_many([(key(i), answer(i, model="Embeddings:1")) for i in range(3)])
        store.put_many([(key(i), answer(i, model="Embeddings:2")) for i in range(3, 10)])
        info = store.info()
    assert info.entries == 10
    assert [(s.model, s.entries) for s in info.by_model] == [
        ("Embeddings:2", 7),
        ("Embeddings:1", 3),
    ]
    assert info.by_model[1].payload_bytes == 3 * 4096
    assert info.by_model[1].tokens == 5 + 6 + 7
    assert (info.oldest, info.newest) == (1_700_000_000.0, 1_700_000_009.0)
    assert info.file_bytes > 10 * 4096


def test_prune_by_age_drops_only_older_answers(tmp_path: Path) -> None:
    with AnswerStore(tmp_path) as store:
        store.put_many([(key(i), answer(i)) for i in range(10)])
        report = store.prune(created_before=1_700_000_004.0)
        left = store.get_many([key(i) for i in range(10)])
    assert report.removed == 4
    assert set(left) == {key(i) for i in range(4, 10)}


def test_prune_to_a_size_drops_the_oldest_until_the_pages_in_use_fit(tmp_path: Path) -> None:
    with AnswerStore(tmp_path) as store:
        store.put_many([(key(i), answer(i)) for i in range(2000)])
        full = store.info()
        report = store.prune(max_bytes=2_000_000)
        left = store.get_many([key(i) for i in range(2000)])
        after = store.info()
    assert report.bytes_before == full.live_bytes > 8_000_000
    assert report.bytes_after == after.live_bytes <= 2_000_000
    assert 0 < len(left) < 500
    # The newest answers are the ones kept.
    assert key(1999) in left
    assert key(0) not in left
    assert report.removed == 2000 - len(left) == 2000 - after.entries


def test_pages_freed_by_prune_are_reused_before_the_file_grows(tmp_path: Path) -> None:
    with AnswerStore(tmp_path) as store:
        store.put_many([(key(i), answer(i)) for i in range(2000)])
        store.flush()
        store.prune(max_bytes=1_000_000)
        pruned = store.info().file_bytes
        store.put_many([(key(i), answer(i, created=2e9)) for i in range(2000, 3000)])
        assert store.info().file_bytes <= pruned * 1.05


def test_a_file_that_is_not_a_store_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / STORE_FILE).mkdir()
    (tmp_path / STORE_FILE / "data.mdb").write_bytes(b"this is not lmdb" * 1000)
    with pytest.raises(CacheUnavailable, match=r"answers\.lmdb.*another cache directory"):
        AnswerStore(tmp_path)


def test_a_store_of_another_schema_is_refused(tmp_path: Path) -> None:
    AnswerStore(tmp_path).close()
    env = lmdb.open(str(tmp_path / STORE_FILE), max_dbs=3)
    with env.begin(write=True, db=env.open_db(b"meta")) as txn:
        txn.put(b"schema", b"99")
    env.close()
    with pytest.raises(CacheUnavailable, match="schema 99"):
        AnswerStore(tmp_path)


def test_an_unwritable_directory_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CacheUnavailable, match="cannot use"):
        AnswerStore(blocker / "cache")


def test_the_repr_of_an_answer_does_not_dump_its_payload() -> None:
    assert "4096 bytes" in repr(answer(1))


def test_threads_look_up_while_answers_are_being_stored(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    with AnswerStore(tmp_path, commit_interval=0.01) as store:
        store.put_many([(key(i), answer(i)) for i in range(100)])
        store.flush()

        def look_up() -> None:
            try:
                for _ in range(200):
                    assert len(store.get_many([key(i) for i in range(100)])) == 100
            except BaseException as exc:
                errors.append(exc)

        readers = [threading.Thread(target=look_up) for _ in range(4)]
        for reader in readers:
            reader.start()
        for i in range(100, 600):
            store.put_many([(key(i), answer(i))])
        for reader in readers:
            reader.join()
        assert store.info().entries == 600
    assert errors == []
