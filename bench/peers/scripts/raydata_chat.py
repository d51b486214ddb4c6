"""Chat jobs through Ray Data's HttpRequestProcessor, as a Ray user would run them: a local
Ray cluster, the OAuth token fetched once up front (the processor's headers are static, so it
cannot refresh one), `limit` workers each sending one request at a time (one batch per block,
so the stream limit is never exceeded), Ray's retries on (429, 502-504, resets; exponential
backoff, Retry-After not read), answers written by `write_parquet` as blocks finish, so a
re-run skips the jobs already answered. A job whose retries run out fails its block, which
Ray Data is told to tolerate: that block's jobs are lost from this run."""

import math
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import ray
import requests
from ray.data.llm import HttpRequestProcessorConfig, build_processor

BATCH = 8


def access_token() -> str:
    response = requests.post(
        os.environ["GIGACHAT_AUTH_URL"],
        headers={"Authorization": f"Basic {os.environ['GIGACHAT_CREDENTIALS']}",
                 "RqUID": str(uuid.uuid4())},
        data={"scope": os.environ.get("GIGACHAT_SCOPE", "GIGACHAT_API_PERS")},
        timeout=30,
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


def answered(results: Path) -> set[str]:
    done: set[str] = set()
    for part in results.glob("*.parquet"):
        try:
            done.update(pq.read_table(part, columns=["id"]).column("id").to_pylist())
        except Exception:
            part.unlink()  # a file cut short by a crash: its jobs are asked again
    return done


def answer(row: dict[str, Any]) -> dict[str, Any]:
    choices = row["http_response"].get("choices")  # a 500 arrives here as a JSON error body
    return {"id": row["id"], "answer": choices[0]["message"]["content"] if choices else None}


def main(jobs_path: str, out_dir: str, limit: int) -> None:
    results = Path(out_dir) / "results"
    results.mkdir(parents=True, exist_ok=True)
    done = answered(results)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().max_errored_blocks = -1  # keep going past a failed block
    ray.data.DataContext.get_current().enable_progress_bars = False
    with Path(jobs_path).open("rb") as lines:
        jobs = sum(1 for _ in lines)
    config = HttpRequestProcessorConfig(
        url=os.environ["GIGACHAT_BASE_URL"].rstrip("/") + "/chat/completions",
        headers={"Authorization": f"Bearer {access_token()}"},
        batch_size=BATCH,
        concurrency=(limit, limit),  # a fixed pool: the autoscaler starts at one worker
        max_retries=5,
        base_retry_wait_time_in_s=0.5,
        http_request_stage={"num_cpus": 0.1},  # the workers wait on the network
    )
    processor = build_processor(
        config,
        preprocess=lambda row: {"payload": {
            "model": "GigaChat", "messages": [{"role": "user", "content": row["prompt"]}],
        }},
        postprocess=answer,
    )
    ds = ray.data.read_json(jobs_path, override_num_blocks=max(1, math.ceil(jobs / BATCH)))
    ds = ds.filter(lambda row: row["id"] not in done)
    processor(ds).filter(lambda row: row["answer"] is not None).write_parquet(str(results))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
