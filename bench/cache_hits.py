"""Cache hits per second through the run's whole hit path, in one process.

    python -m bench.cache_hits [--hits 20000] [--repeat 3]

A store is filled with `--hits` 1024-float answers; each pass then takes the producer's
path for every job, in chunks of 512 as a run reads them: the key (`cache_key` of the
kind's material), one LMDB read transaction per chunk (`AnswerReuse.lookup`), and the
chunk's rows built as the writer gets them. "columns" is the run's path (`cached_batch`:
one Arrow table a chunk, straight from the stored bytes); "rows" is the row-by-row path
kept for kinds without columns (`cached_row`, `reused_batch`, `rows_to_table`), for
comparison. Each figure is the median of `--repeat` passes.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from array import array
from collections.abc import Callable, Sequence
from pathlib import Path

from batch.api_types import Usage
from batch.outcomes import cached_batch, reused_batch, with_cached_column
from batch.reuse import AnswerReuse
from batch.writer import rows_to_table
from jobs.base import Job, JobResult, SourceLocation
from jobs.embeddings import EmbeddingsKind

CHUNK = 512


def jobs_of(n: int) -> list[Job]:
    return [
        Job(f"t{i}", SourceLocation("t.jsonl", i + 1), {"model": "Embeddings", "text": f"{i}"})
        for i in range(n)
    ]


def fill(reuse: AnswerReuse, jobs: Sequence[Job]) -> None:
    rng = random.Random(5)
    for first in range(0, len(jobs), 1000):
        reuse.keep(
            [
                JobResult(
                    job,
                    {
                        "embedding": array("f", (rng.random() for _ in range(1024))),
                        "prompt_tokens": 9,
                        "model": "Embeddings:1",
                        "metadata": None,
                    },
                    Usage(prompt_tokens=9),
                    "Embeddings:1",
                )
                for job in jobs[first : first + 1000]
            ]
        )
    if reuse.store is not None:
        reuse.store.flush()


def rate(jobs: Sequence[Job], build: Callable[[Sequence[Job]], int]) -> tuple[float, float]:
    """Hits per second and per CPU-second of one pass over `jobs`."""
    began, cpu = time.perf_counter(), time.process_time()
    hits = sum(build(jobs[i : i + CHUNK]) for i in range(0, len(jobs), CHUNK))
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    assert hits == len(jobs), f"{hits} hits of {len(jobs)}"
    return hits / elapsed, hits / max(cpu, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hits", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    kind = EmbeddingsKind()
    schema = with_cached_column(kind.result_schema())
    jobs = jobs_of(args.hits)
    with tempfile.TemporaryDirectory(prefix="gigabatch-hits-") as tmp:
        reuse = AnswerReuse.open(kind, Path(tmp) / "out", cache_dir=Path(tmp) / "cache")
        fill(reuse, jobs)

        def columns(chunk: Sequence[Job]) -> int:
            table = cached_batch(kind, reuse.lookup(chunk).hits, schema).tables[0]
            return int(table.num_rows)

        def rows(chunk: Sequence[Job]) -> int:
            out = reused_batch(reuse.lookup(chunk).cached, cached=True)
            return int(rows_to_table(out.results, schema).num_rows)

        for name, build in (("columns (the run's path)", columns), ("rows (row by row)", rows)):
            passes = [rate(jobs, build) for _ in range(args.repeat)]
            print(
                f"{name}: {statistics.median(p[0] for p in passes):,.0f} hits/s, "
                f"{statistics.median(p[1] for p in passes):,.0f} per CPU-s "
                f"({args.hits:,} 1024-float hits, medians of {args.repeat} passes; passes: "
                + ", ".join(f"{p[0]:,.0f}" for p in passes)
                + ")",
                flush=True,
            )
        reuse.close(finished=True)


if __name__ == "__main__":
    main()
