"""Texts to embed through langchain-gigachat: `aembed_documents` sends its whole list in one
request, so the texts go in chunks of 64, `limit` chunks at once (the known stream limit),
the client's retries on; one Parquet file written once all are in, a failed chunk reported."""

import asyncio
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from langchain_gigachat import GigaChatEmbeddings

CHUNK = 64


async def embed_all(jobs: list[dict[str, str]], limit: int) -> dict[str, list[float]]:
    embedder = GigaChatEmbeddings(model="Embeddings", timeout=120, max_retries=5)
    gate = asyncio.Semaphore(limit)
    vectors: dict[str, list[float]] = {}

    async def embed(chunk: list[dict[str, str]]) -> None:
        async with gate:
            try:
                embedded = await embedder.aembed_documents([job["text"] for job in chunk])
            except Exception as exc:
                print(f"chunk from {chunk[0]['id']} failed: {exc!r}", file=sys.stderr)
                return
        vectors.update(zip((job["id"] for job in chunk), embedded, strict=True))

    chunks = [jobs[i : i + CHUNK] for i in range(0, len(jobs), CHUNK)]
    await asyncio.gather(*(embed(chunk) for chunk in chunks))
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
