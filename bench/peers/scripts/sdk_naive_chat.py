"""Chat jobs through the official SDK, the plain way: one `achat` per job, a semaphore at the
known stream limit, the answers written once all are in; a failed job is reported."""

import asyncio
import json
import sys
from pathlib import Path

from gigachat import GigaChat


async def answer_all(jobs: list[dict[str, str]], limit: int) -> dict[str, str]:
    gate = asyncio.Semaphore(limit)
    answers: dict[str, str] = {}
    async with GigaChat(model="GigaChat", max_connections=limit, timeout=120) as giga:

        async def one(job: dict[str, str]) -> None:
            async with gate:
                try:
                    response = await giga.achat(job["prompt"])
                except Exception as exc:
                    print(f"job {job['id']} failed: {exc!r}", file=sys.stderr)
                    return
                answers[job["id"]] = response.choices[0].message.content

        await asyncio.gather(*(one(job) for job in jobs))
    return answers


def main(jobs_path: str, out_dir: str, limit: int) -> None:
    with Path(jobs_path).open(encoding="utf-8") as lines:
        jobs = [json.loads(line) for line in lines]
    answers = asyncio.run(answer_all(jobs, limit))
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with (Path(out_dir) / "results.jsonl").open("w", encoding="utf-8") as out:
        for job_id, answer in answers.items():
            out.write(json.dumps({"id": job_id, "answer": answer}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
