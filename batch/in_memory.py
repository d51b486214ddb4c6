"""Answers for work held in memory: an iterable of prompts, jobs or texts in, one Arrow
table out, in input order (`chat`, `embed` and their async forms).

Underneath is an ordinary run: the items become a JSONL file of jobs in a temporary
directory, the engine answers them into a temporary output directory, and the table is
read back from its parts before the directory is removed. Item N is line N of that file,
so a validation error's "line N" is the N-th item (counted from 1).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batch.api import arun, refuse_in_event_loop
from batch.errors import ConfigError
from batch.layout import FAILED, RESULTS

ITEMS = "items.jsonl"
# What a failed row adds to the kind's result columns (null for answered rows).
_FAILED_COLUMNS = {"error_class": "error_class", "message": "error", "status": "error_status"}


def chat(prompts_or_jobs: Iterable[str | Mapping[str, Any]], **options: Any) -> pa.Table:
    """Answer each prompt (a string) or chat job (a dict, as a JSONL line would be) and
    return one row per item, in input order: the `gigabatch run` result columns plus
    `error_class`, `error` and `error_status`, which are set on the rows that failed.
    `options` are `batch.run`'s (`model=`, `system=`, `temperature=`, `max_cost=`...).
    Inside a running event loop, `await batch.achat(...)`.

        >>> table = batch.chat(["Hi!", {"prompt": "2+2?", "max_tokens": 10}], emulator=True)
        >>> table.column("content").to_pylist()
    """
    refuse_in_event_loop("batch.chat", "batch.achat")
    return anyio.run(_answer, _chat_records(prompts_or_jobs), "chat", options)


async def achat(prompts_or_jobs: Iterable[str | Mapping[str, Any]], **options: Any) -> pa.Table:
    """`chat` on the running event loop."""
    return await _answer(_chat_records(prompts_or_jobs), "chat", options)


def embed(texts: Iterable[str], *, model: str | None = None, **options: Any) -> pa.Table:
    """Embed each text and return one row per text, in input order: `embedding` (a fixed
    size list of float32), `prompt_tokens`, `model`... plus `error_class`, `error` and
    `error_status` on the rows that failed. `model` defaults to the embed kind's
    (`Embeddings`); `options` are `batch.run`'s. Inside a running event loop,
    `await batch.aembed(...)`.

        >>> table = batch.embed(["first text", "second text"], emulator=True)
        >>> table.column("embedding").type
    """
    refuse_in_event_loop("batch.embed", "batch.aembed")
    return anyio.run(_answer, _embed_records(texts), "embed", {**options, "model": model})


async def aembed(texts: Iterable[str], *, model: str | None = None, **options: Any) -> pa.Table:
    """`embed` on the running event loop."""
    return await _answer(_embed_records(texts), "embed", {**options, "model": model})


def _chat_records(items: Iterable[str | Mapping[str, Any]]) -> Iterable[dict[str, Any]]:
    for number, item in enumerate(items, 1):
        if isinstance(item, str):
            yield {"id": str(number), "prompt": item}
        elif isinstance(item, Mapping):
            yield {"id": str(number), **item}
        else:
            raise ConfigError(
                f"item {number}: a chat item is a prompt (str) or a job (dict), "
                f"got {type(item).__name__}"
            )


def _embed_records(texts: Iterable[str]) -> Iterable[dict[str, Any]]:
    if isinstance(texts, str):
        raise ConfigError("texts: give an iterable of strings, not one string")
    for number, text in enumerate(texts, 1):
        if not isinstance(text, str):
            raise ConfigError(f"item {number}: a text is a str, got {type(text).__name__}")
        yield {"id": str(number), "text": text}


async def _answer(
    records: Iterable[dict[str, Any]], kind: str, options: dict[str, Any]
) -> pa.Table:
    for name in ("out", "kind", "check"):
        if name in options:
            raise ConfigError(f"{name}: set by batch.{kind}() itself (batch.run takes it)")
    options = {k: v for k, v in options.items() if v is not None}
    workdir = Path(await anyio.to_thread.run_sync(_temporary_dir))
    try:
        jobs = workdir / ITEMS
        ids = await anyio.to_thread.run_sync(_write_jobs, records, jobs)
        out = workdir / "out"
        summary = await arun(jobs, out, kind=kind, check=False, **options)
        if summary.status not in ("completed", "failed_rows"):
            summary.raise_for_status()
        return await anyio.to_thread.run_sync(read_answers, out, ids)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(shutil.rmtree, workdir, True)


def _temporary_dir() -> str:
    return tempfile.mkdtemp(prefix="gigabatch-")


def _write_jobs(records: Iterable[dict[str, Any]], path: Path) -> list[str]:
    """Write `records` as JSONL; the ids, in order (a job's own id wins over its number)."""
    ids: list[str] = []
    with path.open("wb") as out:
        for record in records:
            try:
                line = orjson.dumps(record)
            except TypeError as exc:
                raise ConfigError(f"item {len(ids) + 1}: not JSON: {exc}") from None
            out.write(line + b"\n")
            ids.append(str(record["id"]))
    if not ids:
        raise ConfigError("no items: give at least one")
    return ids


def read_answers(out: Path, ids: list[str]) -> pa.Table:
    """The results and failed rows of the run in `out`, as one table in the order of `ids`."""
    answered = [pq.read_table(p) for p in sorted((out / RESULTS).glob("*.parquet"))]
    failed = [
        pq.read_table(p, columns=["id", *_FAILED_COLUMNS]).rename_columns(
            ["id", *_FAILED_COLUMNS.values()]
        )
        for p in sorted((out / FAILED).glob("*.parquet"))
    ]
    table = pa.concat_tables([*answered, *failed], promote_options="permissive")
    position = pc.index_in(table.column("id"), value_set=pa.array(ids, pa.string()))
    return table.take(pc.sort_indices(position))
