"""The cache shared by several processes, and killed with SIGKILL at random moments: no
corruption, and every answer a writer saw committed is still there."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import lmdb

from batch.cache import STORE_FILE, AnswerStore, CachedAnswer, cache_key

# A writer: answers for numbers start, start+1, ... in batches, with payloads derived from
# the number; after each flush() it prints the next number, so whatever it printed is durable.
WRITER = """
import hashlib, sys
from pathlib import Path
from batch.cache import AnswerStore, CachedAnswer, cache_key
cache_dir, start, count, batch = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), 50
with AnswerStore(cache_dir, commit_interval=0.01) as store:
    for first in range(start, start + count, batch):
        items = []
        for i in range(first, min(first + batch, start + count)):
            seed = hashlib.blake2b(str(i).encode(), digest_size=64).digest()
            answer = CachedAnswer(seed * 64, "m", float(i), i)
            items.append((cache_key("t", str(i).encode()), answer))
        store.put_many(items)
        if first % 500 == 0:
            store.flush()
            print(first + batch, flush=True)
        store.get_many([item[0] for item in items[:8]])
"""


def expected(i: int) -> bytes:
    return hashlib.blake2b(str(i).encode(), digest_size=64).digest() * 64


def key(i: int) -> bytes:
    return cache_key("t", str(i).encode())


def start_writer(cache_dir: Path, start: int, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(cache_dir), str(start), str(count)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def check_every_entry(cache_dir: Path) -> int:
    """The store opens, its two tables agree, and every stored payload is the one its number
    should have."""
    numbers = [int(created) for created in _ages(cache_dir)]
    with AnswerStore(cache_dir) as store:
        info = store.info()
        found = store.get_many([key(i) for i in numbers])
    assert len(found) == len(numbers) == info.entries
    for i in numbers:
        answer = found[key(i)]
        assert answer.payload == expected(i)
        assert answer.tokens == i
    return len(numbers)


def _ages(cache_dir: Path) -> list[float]:
    env = lmdb.open(str(cache_dir / STORE_FILE), max_dbs=3, readonly=True)
    with env.begin(db=env.open_db(b"by_age", create=False)) as txn:
        ages = [struct.unpack_from(">d", k)[0] for k, _ in txn.cursor().iternext()]
    env.close()
    return ages


def test_kill_9_at_random_moments_never_corrupts_or_loses_committed_answers(
    tmp_path: Path,
) -> None:
    rng = random.Random(7)
    durable_upto: dict[int, int] = {}
    for round_ in range(6):
        start = round_ * 100_000
        writer = start_writer(tmp_path, start, 50_000)
        assert writer.stdout is not None
        time.sleep(0.6 + rng.random() * 1.2)
        writer.send_signal(signal.SIGKILL)
        output, _ = writer.communicate()
        printed = [int(line) for line in output.split()]
        if printed:
            durable_upto[start] = printed[-1]
    assert durable_upto, "no writer got as far as one commit"
    rows = check_every_entry(tmp_path)
    assert rows >= sum(upto - start for start, upto in durable_upto.items())
    with AnswerStore(tmp_path) as store:
        for start, upto in durable_upto.items():
            wanted = [key(i) for i in range(start, upto)]
            assert len(store.get_many(wanted)) == len(wanted)
        # A writer killed holding the write lock does not block the next one.
        store.put_many([(key(-1), CachedAnswer(b"after", "m", -1.0, 0))])
        store.flush()
        assert store.get_many([key(-1)])[key(-1)].payload == b"after"


def test_two_processes_write_and_read_one_cache_at_once(tmp_path: Path) -> None:
    writers = [start_writer(tmp_path, n * 1_000_000, 3000) for n in range(2)]
    for writer in writers:
        writer.communicate(timeout=120)
        assert writer.returncode == 0
    assert check_every_entry(tmp_path) == 6000
    with AnswerStore(tmp_path) as store:
        found = store.get_many([key(i) for i in (0, 2999, 1_000_000, 1_002_999)])
    assert len(found) == 4
