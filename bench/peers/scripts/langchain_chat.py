"""Chat jobs through langchain-gigachat: one `abatch` over all prompts with `max_concurrency`
at the known stream limit and the client's retries on; answers written once all are in, a
failed job reported (`return_exceptions=True`, so one failure does not lose the rest)."""

import asyncio
import json
import sys
from pathlib import Path

from langchain_gigachat import GigaChat


def main(jobs_path: str, out_dir: str, limit: int) -> None:
    with Path(jobs_path).open(encoding="utf-8") as lines:
        jobs = [json.loads(line) for line in lines]
    llm = GigaChat(model="GigaChat", timeout=120, max_retries=5)
    answers = asyncio.run(
        llm.abatch(
            [job["prompt"] for job in jobs],
            config={"max_concurrency": limit},
            return_exceptions=True,
        )
    )
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with (Path(out_dir) / "results.jsonl").open("w", encoding="utf-8") as out:
        for job, answer in zip(jobs, answers, strict=True):
            if isinstance(answer, Exception):
                print(f"job {job['id']} failed: {answer!r}", file=sys.stderr)
                continue
            row = {"id": job["id"], "answer": answer.content}
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
