"""Texts to embed through the official SDK, the plain way: one `aembeddings` call per text, a
semaphore at the known stream limit, one Parquet file written once all are in."""

import asyncio
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from gigachat import GigaChat


async def embed_all(jobs: list[dict[str, str]], limit: int) -> dict[str, list[float]]:
    gate = asyncio.Semaphore(limit)
    vectors: dict[str, list[float]] = {}
    async with GigaChat(max_connections=limit, timeout=120) as giga:

        async def one(job: dict[str, str]) -> None:
            async with gate:
                try:
                    response = await giga.aembeddings([job["text"]], model="Embeddings")
                except Exception as exc:
                    print(f"job {job['id']} failed: {exc!r}", file=sys.stderr)
                    return
                vectors[job["id"]] = response.data[0].embedding

        await asyncio.gather(*(one(job) for job in jobs))
    return vectors


def main(jobs_path: str, out_dir: str, limit: int) -> None:
    with Path(jobs_path).open(encoding="utf-8") as lines:
        jobs = [json.loads(line) for line in lines]
    vectors = asyncio.run(embed_all(jobs, limit))
    Path(out_dir, "results").mkdir(parents=True, exist_ok=True)
    table = pa.table({"id": list(vectors), "embedding": list(vectors.values())})
    pq.write_table(table, Path(out_dir) / "results" / "part-0.parquet")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
