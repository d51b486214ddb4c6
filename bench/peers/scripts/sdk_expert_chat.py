"""Chat jobs through the official SDK, the careful way: `limit` workers (the known stream
limit), the SDK's retries on (they honour Retry-After), every answer appended to a JSONL file
as it arrives, in one write, so a re-run after a crash skips the jobs already answered."""

import asyncio
import json
import sys
from pathlib import Path
from typing import BinaryIO

from gigachat import GigaChat


def answered(results: Path) -> set[str]:
    done: set[str] = set()
    if results.exists():
        with results.open(encoding="utf-8") as lines:
            for line in lines:
                try:
                    done.add(json.loads(line)["id"])
                except ValueError:
                    continue  # a line cut short by a crash: that job is asked again
    return done


async def answer_all(jobs: list[dict[str, str]], limit: int, out: BinaryIO) -> None:
    queue: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    giga = GigaChat(
        model="GigaChat", max_connections=limit, timeout=120, max_retries=5,
        retry_backoff_factor=0.5,
    )

    async def worker() -> None:
        while not queue.empty():
            job = queue.get_nowait()
            try:
                response = await giga.achat(job["prompt"])
            except Exception as exc:
                print(f"job {job['id']} failed, re-run to retry: {exc!r}", file=sys.stderr)
                continue
            row = {"id": job["id"], "answer": response.choices[0].message.content}
            out.write(json.dumps(row, ensure_ascii=False).encode() + b"\n")

    try:
        await asyncio.gather(*(worker() for _ in range(limit)))
    finally:
        await giga.aclose()


def main(jobs_path: str, out_dir: str, limit: int) -> None:
    results = Path(out_dir) / "results.jsonl"
    results.parent.mkdir(parents=True, exist_ok=True)
    done = answered(results)
    with Path(jobs_path).open(encoding="utf-8") as lines:
        jobs = [job for job in map(json.loads, lines) if job["id"] not in done]
    with results.open("ab", buffering=0) as out:
        asyncio.run(answer_all(jobs, limit, out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
