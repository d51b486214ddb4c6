"""The output directory is the checkpoint: committed Parquet parts say which jobs are done.

    OUT/manifest.json            fingerprints of the input and of every answer-affecting setting,
                                 the committed parts and totals (rewritten atomically)
    OUT/results/part-NNNNN.parquet   succeeded jobs      } a job id is in exactly one of them
    OUT/failed/part-NNNNN.parquet    failed jobs         }
    OUT/superseded/failed-N/     failed parts set aside by --retry-failed (their ids are pending)
    OUT/invalid.jsonl            lines skipped by --skip-invalid

A part is written under a dot-name, fsynced, renamed into place and its directory fsynced, so
a reader (or a resume) sees whole parts or nothing. Each part's footer carries its rows' usage,
so totals can always be rebuilt from the parts themselves, whatever the manifest says.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import orjson
import pyarrow as pa

from batch.api_types import Usage
from batch.errors import RunRefused
from batch.id_hashes import IdHashSet, id_hash
from batch.layout import FAILED, MANIFEST, RESULTS, part_number
from batch.part_store import LocalParts, PartStore
from batch.pricing import PriceTable
from batch.storage import output_errors

FORMAT = 1
_USAGE_KEY = b"gigabatch.usage"

FAILED_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("error_class", pa.string()),
        ("status", pa.int32()),
        ("message", pa.string()),
        ("attempts", pa.int32()),
        ("request_id", pa.string()),
        ("source", pa.string()),
    ]
)


# The ids already answered (results/ and failed/), skipped by a resume.
DoneIds = IdHashSet


@dataclass
class PartInfo:
    """One committed part: where, how many rows, and the usage of its rows by model."""

    path: str
    rows: int
    usage: dict[str, Usage] = field(default_factory=dict)
    size: int = 0  # bytes, when this run wrote it (not in the manifest)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "rows": self.rows,
            "usage": {m: _usage_list(u) for m, u in self.usage.items()},
        }


def _usage_list(u: Usage) -> list[int]:
    return [u.prompt_tokens, u.completion_tokens, u.precached_prompt_tokens]


def _usage_from(data: Mapping[str, Any]) -> dict[str, Usage]:
    return {str(m): Usage(int(v[0]), int(v[1]), int(v[2])) for m, v in data.items()}


def _read_part_info(store: PartStore, relative: str) -> PartInfo:
    meta = store.read_metadata(relative)
    kv = meta.metadata or {}
    raw = kv.get(_USAGE_KEY)
    usage = _usage_from(orjson.loads(raw)) if raw else {}
    return PartInfo(relative, meta.num_rows, usage)


@dataclass
class Totals:
    succeeded: int = 0
    failed: int = 0
    usage: dict[str, Usage] = field(default_factory=dict)

    def add(self, kind: str, part: PartInfo) -> None:
        if kind == RESULTS:
            self.succeeded += part.rows
        else:
            self.failed += part.rows
        for model, u in part.usage.items():
            self.usage[model] = self.usage.get(model, Usage()) + u

    def cost(self, prices: PriceTable) -> float:
        return sum(prices.cost(model, u) for model, u in self.usage.items())

    @property
    def tokens(self) -> Usage:
        return sum(self.usage.values(), Usage())


def settings_changes(
    old: Mapping[str, Any], new: Mapping[str, Any], hints: Mapping[str, str] | None = None
) -> list[str]:
    """What differs between two settings fingerprints, one phrase per setting; `hints`
    (the kind's `setting_hints`) say what to do about a setting."""
    changes = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            hint = (hints or {}).get(key)
            change = f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
            changes.append(f"{change} ({hint})" if hint else change)
    return changes


def _normalised(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings as they read back from JSON, so a fresh run compares equal to a manifest."""
    loaded: dict[str, Any] = orjson.loads(orjson.dumps(dict(settings), default=str))
    return loaded


class Checkpoint:
    """An output directory opened for a run: what is done, and where the next part goes.

    The blocking methods (`open`, `commit`) do file I/O; the engine calls them from a thread.
    Parts and manifest go to `store`: `out_dir` itself, or an output URI (batch/part_store.py).
    """

    def __init__(
        self,
        out_dir: Path,
        manifest: dict[str, Any],
        done: DoneIds,
        store: PartStore | None = None,
    ) -> None:
        self.out_dir = out_dir
        self.store = store if store is not None else LocalParts(out_dir)
        self.manifest = manifest
        self.done = done
        self.parts: dict[str, list[PartInfo]] = {RESULTS: [], FAILED: []}
        self.totals = Totals()
        self._next = 1
        self._unnamed = 0  # rows of parts written since the last manifest

    @classmethod
    def open(
        cls,
        out_dir: Path,
        *,
        kind: str,
        input_path: str,
        input_fingerprint: str,
        settings: Mapping[str, Any],
        total_jobs: int,
        restart: bool = False,
        retry_failed: bool = False,
        setting_hints: Mapping[str, str] | None = None,
        store: PartStore | None = None,
    ) -> Checkpoint:
        """Open (or create) `out_dir` for a run. Refuses, with what changed, to resume an
        output made from another input or other answer-affecting settings unless `restart`
        (which deletes the previous output); `setting_hints` say what to do about a changed
        setting. `retry_failed` moves failed/ aside so its ids are pending again. `store`
        is where parts and manifest live (by default `out_dir` itself)."""
        settings_now = _normalised({"kind": kind, **settings})
        store = store if store is not None else LocalParts(out_dir)
        if restart:
            with output_errors("clear"):
                store.clear()
        with output_errors("read"):
            previous = store.read_manifest()
        if previous is not None:
            _check_resumable(previous, input_fingerprint, settings_now, setting_hints)
        with output_errors("write"):
            store.prepare(previous)
            if retry_failed:
                store.set_failed_aside()
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "kind": kind,
            "input": {"path": input_path, "fingerprint": input_fingerprint},
            "settings": settings_now,
            "total_jobs": total_jobs,
            "created_at": previous.get("created_at") if previous else _now(),
        }
        checkpoint = cls(out_dir, manifest, DoneIds(), store)
        checkpoint._scan(previous)
        with output_errors("write"):
            checkpoint.write_manifest()
        return checkpoint

    def _scan(self, previous: dict[str, Any] | None) -> None:
        with output_errors("read"):
            self._scan_parts(previous)

    def _scan_parts(self, previous: dict[str, Any] | None) -> None:
        hashes: array[int] = array("Q")
        highest = 0
        store = self.store
        for sub in (RESULTS, FAILED):
            for relative in store.committed(sub, previous):
                info = _read_part_info(store, relative)
                self.parts[sub].append(info)
                self.totals.add(sub, info)
                highest = max(highest, part_number(Path(relative)))
                hashes.extend(id_hash(i) for i in store.read_ids(relative))
        self.done = DoneIds.from_hashes(hashes)
        self._next = highest + 1

    def commit(
        self, results: pa.Table | None, failures: pa.Table | None, usage: Mapping[str, Usage]
    ) -> list[PartInfo]:
        """Commit one part per non-empty table, atomically, then the manifest. `usage` is the
        billed usage of the results' rows, by the model that answered."""
        committed = []
        for sub, table, part_usage in (
            (RESULTS, results, usage),
            (FAILED, failures, {}),
        ):
            if table is not None and table.num_rows > 0:
                committed.append(self.commit_part(sub, table, part_usage))
        if committed:
            self.write_manifest()
        return committed

    def commit_part(self, sub: str, table: pa.Table, usage: Mapping[str, Usage]) -> PartInfo:
        """Commit one part of `sub` (RESULTS or FAILED): once this returns its rows are done,
        whatever happens to the manifest (a resume reads the parts). Raises OSError with
        nothing written."""
        info = self._write_part(sub, table, usage)
        self.parts[sub].append(info)
        self.totals.add(sub, info)
        self._unnamed += info.rows
        return info

    @property
    def unrecorded_rows(self) -> int:
        """Rows in parts whose manifest could not be written yet, when the manifest is the
        record (an output URI): not done until it is written (0 for a local output)."""
        return self._unnamed if self.store.manifest_is_record else 0

    def ensure_datasets(
        self, result_schema: pa.Schema, failed_schema: pa.Schema = FAILED_SCHEMA
    ) -> None:
        """Give results/ and failed/ at least one part (an empty one if need be), so each
        reads as a dataset with its columns even when a run had no rows of that kind:
        `select * from 'DIR/failed/*.parquet'` answers "no rows", not "no files"."""
        written = False
        for sub, schema in ((RESULTS, result_schema), (FAILED, failed_schema)):
            if not self.parts[sub]:
                self.parts[sub].append(self._write_part(sub, schema.empty_table(), {}))
                written = True
        if written:
            self.write_manifest()

    def _write_part(self, sub: str, table: pa.Table, usage: Mapping[str, Usage]) -> PartInfo:
        relative = str(PurePosixPath(sub, self.store.part_name(self._next)))
        self._next += 1
        meta = dict(table.schema.metadata or {})
        meta[_USAGE_KEY] = orjson.dumps({m: _usage_list(u) for m, u in usage.items()})
        table = table.replace_schema_metadata(meta)
        size = self.store.write_part(relative, table)
        return PartInfo(relative, table.num_rows, dict(usage), size)

    def free_bytes(self) -> int:
        """Room left for parts; -1 when the output's filesystem cannot say."""
        return self.store.free_bytes()

    def write_manifest(self) -> None:
        self.manifest["updated_at"] = _now()
        self.manifest["parts"] = [p.to_json() for sub in (RESULTS, FAILED) for p in self.parts[sub]]
        self.manifest["totals"] = {
            "succeeded": self.totals.succeeded,
            "failed": self.totals.failed,
            "usage": {m: _usage_list(u) for m, u in self.totals.usage.items()},
        }
        self.store.write_manifest(orjson.dumps(self.manifest, option=orjson.OPT_INDENT_2))
        self._unnamed = 0


def _check_resumable(
    previous: Mapping[str, Any],
    input_fingerprint: str,
    settings: Mapping[str, Any],
    hints: Mapping[str, str] | None,
) -> None:
    changes = []
    old_input = str(previous.get("input", {}).get("fingerprint"))
    old_scheme, _, old_hash = old_input.rpartition(":")
    new_scheme, _, new_hash = input_fingerprint.rpartition(":")
    if old_scheme != new_scheme:
        changes.append(
            "the output was made by an earlier gigabatch, whose input fingerprint "
            "(of the file's name and bytes) cannot be compared with this one's (of the content)"
        )
    elif old_input != input_fingerprint:
        changes.append(f"the input file changed (fingerprint {old_hash[:12]} -> {new_hash[:12]})")
    changes.extend(settings_changes(previous.get("settings", {}), settings, hints))
    if changes:
        raise RunRefused(
            "this output directory was made with a different input or settings: "
            + "; ".join(changes)
            + " (use --restart to start over, or another --out)"
        )


def read_status(output: Path | PartStore) -> tuple[dict[str, Any], Totals]:
    """The manifest and totals of an output directory (or store) rebuilt from the
    committed parts (for `gigabatch status`)."""
    store = LocalParts(output) if isinstance(output, Path) else output
    with output_errors("read"):
        manifest = store.read_manifest()
    if manifest is None:
        raise RunRefused(f"{store.where()} has no {MANIFEST}: not a gigabatch output directory")
    totals = Totals()
    with output_errors("read"):
        for sub in (RESULTS, FAILED):
            for relative in store.committed(sub, manifest):
                totals.add(sub, _read_part_info(store, relative))
    return manifest, totals


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
