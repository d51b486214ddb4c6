"""Deterministic job files of any size for benchmarks, written as a stream.

Texts are built from a fixed vocabulary by a seeded generator, so two runs of a benchmark
read identical files and a 1,000,000-line file never exists in memory.
"""

from __future__ import annotations

import random
from pathlib import Path

import orjson

_WORDS = [
    "данные",
    "модель",
    "запрос",
    "ответ",
    "поток",
    "очередь",
    "токен",
    "пакет",
    "вектор",
    "корпус",
    "отчёт",
    "клиент",
    "batch",
    "model",
    "request",
    "answer",
    "stream",
    "queue",
    "token",
    "vector",
    "corpus",
    "report",
    "client",
    "night",
    "price",
    "budget",
    "quota",
    "limit",
    "retry",
    "server",
    "archive",
    "document",
    "summary",
    "review",
    "translate",
]


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def write_embedding_jobs(
    path: Path, count: int, *, seed: int = 7, words: tuple[int, int] = (8, 40)
) -> Path:
    """`count` lines of `{"id", "text"}`, every text distinct (its id is part of it)."""
    rng = random.Random(seed)
    with path.open("wb") as out:
        for n in range(count):
            text = f"{n} {_text(rng, rng.randint(*words))}"
            out.write(orjson.dumps({"id": f"e{n}", "text": text}) + b"\n")
    return path


def write_chat_jobs(
    path: Path,
    count: int,
    *,
    seed: int = 7,
    words: tuple[int, int] = (10, 60),
    max_tokens: int | None = None,
) -> Path:
    """`count` shorthand chat lines `{"id", "prompt"}` (optionally with `max_tokens`)."""
    rng = random.Random(seed)
    with path.open("wb") as out:
        for n in range(count):
            line: dict[str, object] = {"id": f"c{n}", "prompt": _text(rng, rng.randint(*words))}
            if max_tokens is not None:
                line["max_tokens"] = max_tokens
            out.write(orjson.dumps(line) + b"\n")
    return path
