"""Emulator throughput: requests/s one emulator process serves at zero latency over
keep-alive connections, for chat and for 16-text embedding requests.

The server runs in a child process (serve_emulator(subprocess=True), profile `fast`); the
load comes from this process: `wrk` when it is installed, else a minimal HTTP/1.1 client on
raw asyncio streams (httpx would measure itself, not the server). Prints the median of
several runs.

    python -m bench.emulator_throughput [--seconds 3] [--runs 3] [--connections 32]
        [--generator auto|wrk|python]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import uvloop

from batch.emulator import RunningEmulator, profile, serve_emulator

EMBED_TEXTS = 16


def chat_body(i: int) -> bytes:
    prompt = f"Summarise request number {i} in a few words. [[answer_tokens=32]]"
    return orjson.dumps({"model": "GigaChat", "messages": [{"role": "user", "content": prompt}]})


def embed_body(i: int) -> bytes:
    texts = [
        f"Text {i}-{j}: a sentence of about a hundred characters, as a typical chunk might be."
        for j in range(EMBED_TEXTS)
    ]
    return orjson.dumps({"model": "Embeddings", "input": texts})


def _request(host: str, port: int, path: str, token: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _connection(
    host: str, port: int, requests: list[bytes], stop_at: float, counts: list[int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    i = 0
    try:
        while time.perf_counter() < stop_at:
            writer.write(requests[i % len(requests)])
            i += 1
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
            start = head.lower().index(b"content-length:") + len(b"content-length:")
            length = int(head[start : head.index(b"\r\n", start)])
            await reader.readexactly(length)
            counts[0] += 1
    finally:
        writer.close()


async def _load(
    host: str, port: int, requests: list[bytes], seconds: float, connections: int
) -> float:
    counts = [0]
    started = time.perf_counter()
    stop_at = started + seconds
    await asyncio.gather(
        *(_connection(host, port, requests, stop_at, counts) for _ in range(connections))
    )
    return counts[0] / (time.perf_counter() - started)


def python_load(
    emu: RunningEmulator, path: str, token: str, body: Callable[[int], bytes],
    seconds: float, connections: int,
) -> float:
    """Requests/s from the raw-asyncio client (distinct bodies, cycled)."""
    url = httpx.URL(emu.origin)
    host, port = url.host, url.port or 80
    requests = [_request(host, port, path, token, body(i)) for i in range(1000)]
    return uvloop.run(_load(host, port, requests, seconds, connections))


_WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
wrk.body = [==[%s]==]
"""


def wrk_load(
    emu: RunningEmulator, path: str, token: str, body: bytes, seconds: float, connections: int
) -> float:
    """Requests/s measured by wrk (one body; the server does the same work for any)."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(_WRK_SCRIPT % (token, body.decode()))
        result = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", str(script),
             f"{emu.origin}{path}"],
            check=True, capture_output=True, text=True,
        )
    line = next(x for x in result.stdout.splitlines() if x.startswith("Requests/sec:"))
    if "Non-2xx" in result.stdout:
        raise RuntimeError(f"wrk saw errors:\n{result.stdout}")
    return float(line.split()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--generator", choices=["auto", "wrk", "python"], default="auto")
    args = parser.parse_args()
    use_wrk = args.generator == "wrk" or (args.generator == "auto" and shutil.which("wrk"))
    generator = "wrk" if use_wrk else "python (raw asyncio, uvloop)"
    print(f"load generator: {generator}; {args.connections} keep-alive connections; "
          f"{args.runs} runs of {args.seconds:g} s; {os.cpu_count()} CPUs")
    cases = [
        ("chat", "/api/v1/chat/completions", chat_body),
        (f"embeddings x{EMBED_TEXTS}", "/api/v1/embeddings", embed_body),
    ]
    with serve_emulator(profile("fast"), subprocess=True) as emu:
        token = emu.access_token()
        for name, path, body in cases:
            rates = []
            for _ in range(args.runs):
                if use_wrk:
                    rate = wrk_load(emu, path, token, body(0), args.seconds, args.connections)
                else:
                    rate = python_load(emu, path, token, body, args.seconds, args.connections)
                rates.append(rate)
            runs = ", ".join(f"{r:,.0f}" for r in rates)
            print(f"{name:16} median {statistics.median(rates):8,.0f} req/s   (runs: {runs})")


if __name__ == "__main__":
    main()
