"""The answer store's benchmark: which embedded store to build the cache on, and what the
chosen one costs.

Part 1 compares candidate stores on the cache's workload: batched inserts of ~4 KB values
(a 1024-float32 embedding), then batched point lookups (64 keys a batch, random existing
keys) while two other processes insert into the same store. A store that cannot be opened by
a second process is reported as such and measured without the writers.

Part 2 measures gigabatch's own `AnswerStore`: its lookup and miss rates through
`get_many`, and the RSS of a process holding a store of `--store-entries` answers (whole,
and anonymous: mapped file pages count in RSS but are the kernel's to drop).

    python -m bench.cache_store [--entries 100000] [--rounds 5] [--store-entries 1000000]
        [--stores sqlite,sqlite-rowid,lmdb,duckdb,rocksdict] [--skip-compare] [--skip-store]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

from batch.cache import AnswerStore, CachedAnswer
from bench.cache_candidates import CANDIDATES, VALUE_BYTES, Candidate, key_of, value_of

LOOKUP_BATCH = 64
INSERT_BATCH = 1000


def fill(store: Candidate, start: int, count: int) -> float:
    """Insert keys start..start+count in batches; returns inserts per second."""
    began = time.perf_counter()
    for first in range(start, start + count, INSERT_BATCH):
        last = min(first + INSERT_BATCH, start + count)
        store.put_many([(key_of(i), value_of(i)) for i in range(first, last)])
    return count / (time.perf_counter() - began)


def _writer(kind: str, path: str, start: int, count: int, ready: Any, result: Any) -> None:
    try:
        store = CANDIDATES[kind](Path(path))
    except Exception as exc:
        result.put(f"refused: {type(exc).__name__}: {str(exc)[:80]}")
        ready.set()
        return
    ready.set()
    try:
        result.put(fill(store, start, count))
    except Exception as exc:
        result.put(f"failed: {type(exc).__name__}: {str(exc)[:80]}")
    finally:
        store.close()


def lookup_rate(
    store: Candidate, entries: int, seconds: float, rng: random.Random
) -> tuple[float, float]:
    """Hits per second of batched lookups of random existing keys, and hits per CPU-second
    of this process (the figure a shared machine's load does not move)."""
    hits = 0
    began, cpu = time.perf_counter(), time.process_time()
    while (elapsed := time.perf_counter() - began) < seconds:
        keys = [key_of(rng.randrange(entries)) for _ in range(LOOKUP_BATCH)]
        found = store.get_many(keys)
        hits += len(found)
    return hits / elapsed, hits / max(time.process_time() - cpu, 1e-9)


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def rss_mb() -> float:
    return float(psutil.Process().memory_info().rss) / 2**20


def rss_anon_mb() -> float:
    """Resident memory that is the process's own (not pages of a mapped file, which the
    kernel drops under pressure); Linux only, else the whole RSS."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("RssAnon:"):
                return float(line.split()[1]) / 1024
    return rss_mb()


def compare(name: str, entries: int, rounds: int, root: Path) -> dict[str, Any]:
    path = root / name
    path.mkdir()
    try:
        store = CANDIDATES[name](path)
    except ImportError as exc:
        return {"store": name, "error": f"not installed ({exc.name})"}
    insert_rates = [fill(store, r * entries // rounds, entries // rounds) for r in range(rounds)]
    rng = random.Random(1)
    alone = [lookup_rate(store, entries, 1.0, rng) for _ in range(rounds)]
    ctx = multiprocessing.get_context("spawn")
    ready = [ctx.Event(), ctx.Event()]
    results: Any = ctx.Queue()
    writers = [
        ctx.Process(
            target=_writer,
            args=(name, str(path), entries * (2 + n), entries // 4, ready[n], results),
        )
        for n in range(2)
    ]
    for writer in writers:
        writer.start()
    for event in ready:
        event.wait(60)
    concurrent = [lookup_rate(store, entries, 1.0, rng) for _ in range(rounds)]
    for writer in writers:
        writer.join()
    writer_results = [results.get() for _ in writers]
    rss, rss_anon = rss_mb(), rss_anon_mb()
    store.close()
    return {
        "store": name,
        "insert/s": statistics.median(insert_rates),
        "hits/s alone": statistics.median(r[0] for r in alone),
        "hits/CPU-s alone": statistics.median(r[1] for r in alone),
        "hits/s with 2 writers": statistics.median(r[0] for r in concurrent),
        "writers": writer_results,
        "MB on disk": dir_size(path) / 2**20,
        "RSS MB": rss,
        "RSS anon MB": rss_anon,
    }


def print_row(row: dict[str, Any]) -> None:
    if "error" in row:
        print(f"{row['store']:>10}: {row['error']}", flush=True)
        return
    writers = ", ".join(
        f"{w:,.0f} ins/s" if isinstance(w, float) else str(w) for w in row["writers"]
    )
    print(
        f"{row['store']:>10}: insert {row['insert/s']:>9,.0f}/s | hits "
        f"{row['hits/s alone']:>9,.0f}/s alone ({row['hits/CPU-s alone']:,.0f} per CPU-s), "
        f"{row['hits/s with 2 writers']:>9,.0f}/s "
        f"with 2 writer processes ({writers}) | {row['MB on disk']:,.0f} MB on disk | "
        f"RSS {row['RSS MB']:.0f} MB ({row['RSS anon MB']:.0f} MB anonymous)",
        flush=True,
    )


def answer_of(i: int) -> CachedAnswer:
    return CachedAnswer(value_of(i), "Embeddings:1", 1_700_000_000.0 + i, 6)


def fill_store(cache_dir: Path, entries: int) -> tuple[float, float]:
    """Fill an AnswerStore through put_many (group commit); returns (inserts/s, CPU-us per
    insert)."""
    began, cpu = time.perf_counter(), time.process_time()
    with AnswerStore(cache_dir) as store:
        for first in range(0, entries, INSERT_BATCH):
            last = min(first + INSERT_BATCH, entries)
            store.put_many([(key_of(i), answer_of(i)) for i in range(first, last)])
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    return entries / elapsed, cpu / entries * 1e6


def _lookups(
    store: AnswerStore, keys: Callable[[], list[bytes]], seconds: float
) -> tuple[float, float]:
    """Keys looked up per second through get_many, and per CPU-second."""
    looked = 0
    began, cpu = time.perf_counter(), time.process_time()
    while (elapsed := time.perf_counter() - began) < seconds:
        store.get_many(keys())
        looked += LOOKUP_BATCH
    return looked / elapsed, looked / max(time.process_time() - cpu, 1e-9)


def _measure_store(cache_dir: str, entries: int, rounds: int, result: Any) -> None:
    """In a fresh process: RSS before opening, hit and miss rates, RSS after."""
    rss_before, anon_before = rss_mb(), rss_anon_mb()
    rng = random.Random(2)
    with AnswerStore(Path(cache_dir)) as store:

        def hits() -> list[bytes]:
            return [key_of(rng.randrange(entries)) for _ in range(LOOKUP_BATCH)]

        def misses() -> list[bytes]:
            return [key_of(entries + rng.randrange(10**9)) for _ in range(LOOKUP_BATCH)]

        hit_rates = [_lookups(store, hits, 1.0) for _ in range(rounds)]
        miss_rates = [_lookups(store, misses, 1.0) for _ in range(rounds)]
        rss_after, anon_after = rss_mb(), rss_anon_mb()
        info_began = time.perf_counter()
        store.info()
        info_s = time.perf_counter() - info_began
    result.put(
        {
            "rss_before": rss_before,
            "anon_before": anon_before,
            "hits": statistics.median(r[0] for r in hit_rates),
            "hits_cpu": statistics.median(r[1] for r in hit_rates),
            "misses": statistics.median(r[0] for r in miss_rates),
            "miss_cpu_us": 1e6 / statistics.median(r[1] for r in miss_rates),
            "rss_after": rss_after,
            "anon_after": anon_after,
            "info_s": info_s,
        }
    )


def measure_store(root: Path, entries: int, rounds: int) -> None:
    ctx = multiprocessing.get_context("spawn")
    print(f"\n## gigabatch AnswerStore (LMDB): lookups of {LOOKUP_BATCH}", flush=True)
    for size in (1_000, entries):
        cache_dir = root / f"store-{size}"
        rate, cpu_us = fill_store(cache_dir, size)
        results: Any = ctx.Queue()
        child = ctx.Process(target=_measure_store, args=(str(cache_dir), size, rounds, results))
        child.start()
        m = results.get()
        child.join()
        print(
            f"{size:>10,} entries: insert {rate:,.0f}/s ({cpu_us:.0f} CPU-us each) | "
            f"{dir_size(cache_dir) / 2**20:,.0f} MB on disk | hits {m['hits']:,.0f}/s "
            f"({m['hits_cpu']:,.0f} per CPU-s), misses {m['misses']:,.0f}/s "
            f"({m['miss_cpu_us']:.1f} CPU-us each) | RSS {m['rss_before']:.0f} MB before opening, "
            f"{m['rss_after']:.0f} MB after the lookups; anonymous {m['anon_before']:.0f} -> "
            f"{m['anon_after']:.0f} MB | cache info {m['info_s']:.2f} s",
            flush=True,
        )
        shutil.rmtree(cache_dir)


@contextlib.contextmanager
def scratch(base: str | None) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="gb-cache-bench-", dir=base))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--store-entries", type=int, default=1_000_000)
    parser.add_argument("--stores", default="sqlite,sqlite-rowid,lmdb,duckdb,rocksdict")
    parser.add_argument("--skip-compare", action="store_true")
    parser.add_argument("--skip-store", action="store_true")
    parser.add_argument("--dir", default=None, help="where to put the scratch stores")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores (shared); medians of {args.rounds} rounds")
    with scratch(args.dir) as root:
        if not args.skip_compare:
            print(
                f"\n## candidates: {args.entries:,} values of {VALUE_BYTES} B, lookups of "
                f"{LOOKUP_BATCH}"
            )
            for name in args.stores.split(","):
                print_row(compare(name, args.entries, args.rounds, root))
        if not args.skip_store:
            measure_store(root, args.store_entries, args.rounds)


if __name__ == "__main__":
    main()
