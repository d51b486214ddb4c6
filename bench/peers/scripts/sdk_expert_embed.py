"""Texts to embed through the official SDK, the careful way: 64 texts per request, `limit`
workers (the known stream limit), the SDK's retries on (they honour Retry-After), each batch
written to its own Parquet file as it arrives (renamed into place, so a file is whole), so a
re-run after a crash skips the batches already done."""

import asyncio
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from gigachat import GigaChat

BATCH = 64


def write_part(part: Path, batch: list[dict[str, str]], vectors: list[list[float]]) -> None:
    table = pa.table({"id": [job["id"] for job in batch], "embedding": vectors})
    pq.write_table(table, part.with_suffix(".tmp"))
    part.with_suffix(".tmp").rename(part)


async def embed_all(todo: list[tuple[Path, list[dict[str, str]]]], limit: int) -> None:
    queue: asyncio.Queue[tuple[Path, list[dict[str, str]]]] = asyncio.Queue()
    for item in todo:
        queue.put_nowait(item)
    giga = GigaChat(max_connections=limit, timeout=120, max_retries=5, retry_backoff_factor=0.5)

    async def worker() -> None:
        while not queue.empty():
            part, batch = queue.get_nowait()
            try:
                response = await giga.aembeddings([job["text"] for job in batch])
            except Exception as exc:
                print(f"{part.name} failed, re-run to retry: {exc!r}", file=sys.stderr)
                continue
            data = sorted(response.data, key=lambda item: item.index)
            write_part(part, batch, [item.embedding for item in data])

    try:
        await asyncio.gather(*(worker() for _ in range(limit)))
    finally:
        await giga.aclose()


def main(jobs_path: str, out_dir: str, limit: int) -> None:
    results = Path(out_dir) / "results"
    results.mkdir(parents=True, exist_ok=True)
    with Path(jobs_path).open(encoding="utf-8") as lines:
        jobs = [json.loads(line) for line in lines]
    todo = []
    for start in range(0, len(jobs), BATCH):
        part = results / f"part-{start // BATCH:06d}.parquet"
        if not part.exists():
            todo.append((part, jobs[start : start + BATCH]))
    asyncio.run(embed_all(todo, limit))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
