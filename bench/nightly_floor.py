"""The floor of a night two that writes every row: what pyarrow alone takes to do the
least such a run must do, in a fresh process like the run's.

    python -m bench.nightly_floor JOBS.jsonl DONE_OUT NEW_OUT

It parses every line of JOBS once (orjson) and writes DONE_OUT's result rows to NEW_OUT as
the run writes them: Parquet parts of 5,000 rows with zstd, each fsynced. Reading DONE_OUT
(the rows to write, a stand-in for the cache) is timed apart and left out of the floor.
Prints JSON: `imports_s`, `read_rows_s`, `parse_s`, `write_s`.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

_BEGAN = time.perf_counter()

import orjson  # noqa: E402
import pyarrow.dataset as ds  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

PART_ROWS = 5_000


def main() -> None:
    jobs, done, new = (Path(arg) for arg in sys.argv[1:4])
    imported = time.perf_counter()
    table = ds.dataset(done / "results").to_table()
    read = time.perf_counter()
    with jobs.open("rb") as f:
        for line in f:
            orjson.loads(line)
    parsed = time.perf_counter()
    new.mkdir(parents=True)
    for number, first in enumerate(range(0, table.num_rows, PART_ROWS), 1):
        with (new / f"part-{number:05d}.parquet").open("wb") as f:
            pq.write_table(table.slice(first, PART_ROWS), f, compression="zstd")
            f.flush()
            os.fsync(f.fileno())
    written = time.perf_counter()
    timings = {
        "imports_s": imported - _BEGAN,
        "read_rows_s": read - imported,
        "parse_s": parsed - read,
        "write_s": written - parsed,
    }
    print(orjson.dumps(timings).decode())


if __name__ == "__main__":
    main()
