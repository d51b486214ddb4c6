"""The helpers there is one of: backoff, the LRU, the id-hash set, the atomic file."""

from __future__ import annotations

from array import array
from pathlib import Path

import pytest

from batch.backoff import backoff_delay
from batch.id_hashes import IdHashSet, id_hash, repeated_hashes
from batch.layout import atomic_file
from batch.lru import Lru, text_key


def test_backoff_doubles_per_step_up_to_the_cap_with_equal_jitter() -> None:
    full = [backoff_delay(n, base=1.0, cap=5.0, rng=lambda: 1.0) for n in range(5)]
    half = [backoff_delay(n, base=1.0, cap=5.0, rng=lambda: 0.0) for n in range(5)]
    assert full == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert half == [0.5, 1.0, 2.0, 2.5, 2.5]


def test_backoff_with_a_spread_adds_up_to_the_spread() -> None:
    assert backoff_delay(2, base=0.5, cap=20.0, spread=0.5, rng=lambda: 1.0) == 2.5
    assert backoff_delay(2, base=0.5, cap=20.0, spread=0.5, rng=lambda: 0.0) == 2.0


def test_backoff_of_a_huge_step_is_the_cap() -> None:
    assert backoff_delay(10_000, base=1.0, cap=3.0, rng=lambda: 1.0) == 3.0


def test_lru_drops_the_least_recently_used_entry() -> None:
    lru: Lru[int] = Lru(2)
    a, b, c = (text_key("m", t) for t in "abc")
    lru.put(a, 1)
    lru.put(b, 2)
    assert lru.get(a) == 1  # a is now the most recent
    lru.put(c, 3)
    assert (lru.get(a), lru.get(b), lru.get(c)) == (1, None, 3)


def test_lru_bounded_by_weight_replaces_a_value_and_its_weight() -> None:
    lru: Lru[str] = Lru(10, size=len)
    key = text_key("m", "x")
    lru.put(key, "12345678")
    lru.put(key, "12")
    assert (lru.used, len(lru), lru.get(key)) == (2, 1, "12")


def test_text_keys_differ_by_model() -> None:
    assert text_key("a", "text") != text_key("b", "text")


def test_repeated_hashes_are_those_seen_twice() -> None:
    hashes = array("Q", [id_hash(i) for i in ["a", "b", "a", "c", "b", "a"]])
    assert repeated_hashes(hashes) == {id_hash("a"), id_hash("b")}
    assert repeated_hashes(array("Q", [1])) == set()


def test_an_id_hash_set_holds_its_ids_and_no_others() -> None:
    ids = IdHashSet.from_hashes(array("Q", [id_hash(f"job-{n}") for n in range(100, 0, -1)]))
    assert len(ids) == 100
    assert "job-7" in ids
    assert "job-0" not in ids
    assert 7 not in ids


def test_an_atomic_file_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    with atomic_file(path) as f:
        f.write(b"first")
    with pytest.raises(RuntimeError), atomic_file(path) as f:
        f.write(b"half")
        raise RuntimeError("crash")
    assert path.read_bytes() == b"first"
