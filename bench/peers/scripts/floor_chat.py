"""Not a peer: the floor of chat CPU per answer, for `python -m bench.chat_cpu`. `limit`
workers send the jobs' prompts and parse each answer with orjson, nothing else: no
retries, no output, no journal. `mode` is `httpx` (a plain `httpx.AsyncClient`, the token
fetched once by gigabatch's client) or `client` (gigabatch's own `GigaChatClient.chat`, its
sharded one-write pool included), so (gigabatch's run) - (client) is what the engine adds
and (client) - (httpx) what the client adds or saves over httpx's usual path."""

import asyncio
import sys
from pathlib import Path

import httpx
import orjson

from batch.client import GigaChatClient
from batch.settings import ClientSettings


async def answer_all(prompts: list[str], limit: int, mode: str) -> None:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for prompt in prompts:
        queue.put_nowait(prompt)
    settings = ClientSettings.from_env()
    async with GigaChatClient(settings, max_connections=limit) as client:
        authorization, _ = await client.auth.authorization()
        headers = {"Authorization": authorization or ""}
        async with httpx.AsyncClient(
            base_url=settings.base_url, headers=headers, timeout=120, verify=False,
            limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
        ) as http:

            async def worker() -> None:
                while not queue.empty():
                    body = {"model": "GigaChat",
                            "messages": [{"role": "user", "content": queue.get_nowait()}]}
                    if mode == "client":
                        await client.chat(body)
                    else:
                        response = await http.post("/chat/completions", content=orjson.dumps(
                            body), headers={"Content-Type": "application/json"})
                        orjson.loads(response.content)["choices"][0]["message"]["content"]

            await asyncio.gather(*(worker() for _ in range(limit)))


def main(jobs_path: str, limit: int, mode: str) -> None:
    with Path(jobs_path).open("rb") as lines:
        prompts = [orjson.loads(line)["prompt"] for line in lines]
    asyncio.run(answer_all(prompts, limit, mode))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else "httpx")
