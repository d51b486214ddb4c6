"""What the event log costs a run: CPU per recorded attempt, against the client's CPU per
request (0.73 ms: README, "Client cost"), and bytes per attempt.

    python -m bench.eventlog_cost [--events N] [--repeat R]

Each repeat records N answered chat attempts through `AttemptRecorder.answered`, the call
the runner makes, into a real `events.bin` (buffered appends, as in a run), and reads the
process's CPU time around it. It prints the median and the range over the repeats.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from batch.api_types import Usage
from batch.eventlog import EVENTS, EventLog
from batch.limiter import AdaptiveLimiter
from batch.pricing import PriceTable
from batch.recording import AttemptRecorder
from jobs.base import Job, JobResult, SourceLocation

CLIENT_CPU_PER_REQUEST_S = 0.73e-3


@dataclass(frozen=True)
class _Sent:
    """A request as its limiter slot saw it."""

    sent_at: float
    in_flight: int


def _one_repeat(events: int) -> tuple[float, int]:
    """CPU seconds per recorded attempt, and the log's size in bytes."""
    limiter = AdaptiveLimiter(32, initial=32)
    prices = PriceTable.load()
    job = Job(id="q1", location=SourceLocation("jobs.jsonl", 1), request={})
    outcome = JobResult(job=job, row={}, usage=Usage(40, 30, 12), model="GigaChat")
    with tempfile.TemporaryDirectory() as tmp:
        log = EventLog.open(Path(tmp), max_concurrency=32)
        recorder = AttemptRecorder(log, limiter, prices)
        sent = [_Sent(time.monotonic() - 0.05, 1 + i % 32) for i in range(1024)]
        answers = [outcome]
        start = time.process_time()
        for i in range(events):
            recorder.answered(sent[i & 1023], 1, answers)
        recorder.close()
        spent = time.process_time() - start
        size = (Path(tmp) / EVENTS).stat().st_size
    return spent / events, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    runs = [_one_repeat(args.events) for _ in range(args.repeat)]
    per_event = sorted(r[0] for r in runs)
    median = statistics.median(per_event)
    size = runs[0][1]
    print(f"events per repeat: {args.events:,}; repeats: {args.repeat}")
    print(
        f"CPU per recorded attempt: {median * 1e6:.2f} us median "
        f"(range {per_event[0] * 1e6:.2f}-{per_event[-1] * 1e6:.2f} us)"
    )
    print(
        f"share of the client's {CLIENT_CPU_PER_REQUEST_S * 1e3:.2f} ms CPU per request: "
        f"{median / CLIENT_CPU_PER_REQUEST_S:.3%} (target < 2%)"
    )
    print(f"log size: {size:,} bytes, {size / args.events:.1f} bytes per attempt")


if __name__ == "__main__":
    main()
