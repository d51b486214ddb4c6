"""Where a checkpoint keeps its parts and manifest: a local directory (`LocalParts`, the
layout of batch/layout.py, unchanged) or an output URI on a pyarrow filesystem
(`ObjectParts`), which may be an object store with no rename and no partial-file safety.

On an object store the manifest is the commit record: a part is written under a name no
other run uses (`part-N-TOKEN.parquet`), then the manifest that names it is PUT, whole, in
one request. A part the manifest does not name (a crash came between the two PUTs) is not
done: the next run deletes it before it reads what is done, and sends its jobs again.

Where a file is visible while it is written (file://, HDFS), a crash can tear what was being
written: a torn part is unnamed, hence deleted; the manifest is written twice, first as
`.manifest.next.json`, then as `manifest.json`, so one of them is always whole (the first
that reads is the record, manifest.json first).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from batch.errors import OutputError
from batch.layout import (
    FAILED,
    INVALID,
    MANIFEST,
    RESULTS,
    SUMMARY,
    SUPERSEDED,
    atomic_file,
    clear_output,
    damaged_part,
    parse_manifest,
    part_files,
    part_number,
    prepare_directory,
    read_manifest,
    set_failed_aside,
    write_atomic,
)
from batch.output_uri import OutputURI, is_uri, open_output_uri
from batch.storage import free_bytes

# The manifest's first copy on an output URI (see the module's docstring).
MANIFEST_NEXT = ".manifest.next.json"


class PartStore(Protocol):
    """A checkpoint's storage. Parts are named by their path relative to the output.
    `manifest_is_record`: a part counts as done only once a manifest naming it is written
    (else once the part itself is)."""

    manifest_is_record: bool

    def where(self, relative: str = "") -> str:
        """`relative` (or the output itself) as messages show it."""
        ...

    def read_manifest(self) -> dict[str, Any] | None: ...

    def write_manifest(self, data: bytes) -> None: ...

    def clear(self) -> None:
        """Delete what a previous run wrote (for --restart)."""
        ...

    def prepare(self, manifest: dict[str, Any] | None) -> None:
        """Clear what an interrupted run left before this run reads what is done."""
        ...

    def set_failed_aside(self) -> None:
        """Move the failed parts to superseded/failed-N/ (for --retry-failed)."""
        ...

    def committed(self, sub: str, manifest: dict[str, Any] | None) -> list[str]:
        """The committed parts of `sub` (RESULTS or FAILED), in part order."""
        ...

    def part_name(self, number: int) -> str: ...

    def write_part(self, relative: str, table: pa.Table) -> int:
        """Commit `table` as the part `relative`, whole or not at all; its size in bytes."""
        ...

    def read_metadata(self, relative: str) -> pq.FileMetaData: ...

    def read_ids(self, relative: str) -> list[Any]: ...

    def free_bytes(self) -> int:
        """Room left for parts, -1 when the filesystem cannot say (an object store)."""
        ...

    def dataset_files(self, sub: str) -> tuple[list[str], pafs.FileSystem | None]:
        """The part files of `sub` and the filesystem to read them with (None: local)."""
        ...

    def publish(self, state_dir: Path, relative: str) -> None:
        """Give the output the file `relative` a run wrote in its local directory."""
        ...


class LocalParts:
    """A local output directory: parts renamed into place, the directory is the record."""

    manifest_is_record = False

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir

    def where(self, relative: str = "") -> str:
        return str(self.out_dir / relative) if relative else str(self.out_dir)

    def read_manifest(self) -> dict[str, Any] | None:
        path = self.out_dir / MANIFEST
        return read_manifest(path) if path.exists() else None

    def write_manifest(self, data: bytes) -> None:
        write_atomic(self.out_dir / MANIFEST, data)

    def clear(self) -> None:
        clear_output(self.out_dir)

    def prepare(self, manifest: dict[str, Any] | None) -> None:
        prepare_directory(self.out_dir)

    def set_failed_aside(self) -> None:
        set_failed_aside(self.out_dir)

    def committed(self, sub: str, manifest: dict[str, Any] | None) -> list[str]:
        return [p.relative_to(self.out_dir).as_posix() for p in part_files(self.out_dir / sub)]

    def part_name(self, number: int) -> str:
        return f"part-{number:05d}.parquet"

    def write_part(self, relative: str, table: pa.Table) -> int:
        with atomic_file(self.out_dir / relative) as f:
            write_parquet(table, f)
            return f.tell()

    def read_metadata(self, relative: str) -> pq.FileMetaData:
        path = self.out_dir / relative
        with damaged_part(path):
            return pq.read_metadata(path)

    def read_ids(self, relative: str) -> list[Any]:
        path = self.out_dir / relative
        with damaged_part(path):
            ids: list[Any] = pq.read_table(path, columns=["id"]).column("id").to_pylist()
        return ids

    def free_bytes(self) -> int:
        return free_bytes(self.out_dir)

    def dataset_files(self, sub: str) -> tuple[list[str], pafs.FileSystem | None]:
        return [str(p) for p in sorted((self.out_dir / sub).glob("*.parquet"))], None

    def publish(self, state_dir: Path, relative: str) -> None:
        """Nothing to do: the run's local directory is the output."""


class ObjectParts:
    """An output URI: no rename is used, the manifest (one PUT, written last) is the record."""

    manifest_is_record = True

    def __init__(self, output: OutputURI) -> None:
        self.output = output
        self.fs = output.filesystem

    def where(self, relative: str = "") -> str:
        return f"{self.output.shown.rstrip('/')}/{relative}" if relative else self.output.shown

    def read_manifest(self) -> dict[str, Any] | None:
        damaged: OutputError | None = None
        for name in (MANIFEST, MANIFEST_NEXT):
            try:
                with self.fs.open_input_stream(self.output.path(name)) as f:
                    data = f.read()
                return parse_manifest(data, self.where(MANIFEST))
            except FileNotFoundError:
                continue
            except OutputError as exc:  # torn by a crash: the other copy is whole
                damaged = damaged or exc
        if damaged is not None:
            raise damaged
        return None

    def write_manifest(self, data: bytes) -> None:
        self._put(MANIFEST_NEXT, data)
        self._put(MANIFEST, data)

    def _put(self, relative: str, data: bytes | pa.Buffer) -> None:
        path = self.output.path(relative)
        try:
            with self.fs.open_output_stream(path) as f:
                f.write(data)
        except BaseException:
            # A filesystem that shows a file while it is written (HDFS, file://) keeps no
            # half of it; on an object store the PUT never completed.
            with contextlib.suppress(OSError):
                self.fs.delete_file(path)
            raise

    def clear(self) -> None:
        # The manifest first: from then on every part is unnamed, so however this is
        # interrupted the next run deletes what is left rather than counting it as done.
        for name in (MANIFEST_NEXT, MANIFEST, SUMMARY, INVALID):
            self._delete(name)
        for sub in (RESULTS, FAILED, SUPERSEDED):
            with contextlib.suppress(FileNotFoundError):
                self.fs.delete_dir(self.output.path(sub))

    def _delete(self, relative: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(self.output.path(relative))

    def prepare(self, manifest: dict[str, Any] | None) -> None:
        named = _named_parts(manifest)
        for sub in (RESULTS, FAILED):
            self.fs.create_dir(self.output.path(sub), recursive=True)
            for relative in self._listed(sub):
                if relative not in named:
                    self._delete(relative)

    def _listed(self, sub: str) -> list[str]:
        """The part files under `sub` (committed or not), in part order."""
        selector = pafs.FileSelector(self.output.path(sub), allow_not_found=True)
        names = [
            f"{sub}/{info.base_name}"
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File
            and info.base_name.startswith("part-")
            and info.base_name.endswith(".parquet")
        ]
        return sorted(names, key=lambda name: part_number(Path(name)))

    def set_failed_aside(self) -> None:
        """Copy each failed part to superseded/failed-N/, then delete it: a part the copy
        reached and the delete did not is in both places, never in neither."""
        failed = self._listed(FAILED)
        if not failed:
            return
        selector = pafs.FileSelector(self.output.path(SUPERSEDED), allow_not_found=True)
        earlier = [part_number(Path(i.base_name)) for i in self.fs.get_file_info(selector)]
        target = f"{SUPERSEDED}/failed-{1 + max(earlier, default=0)}"
        self.fs.create_dir(self.output.path(target), recursive=True)
        for relative in failed:
            name = relative.rpartition("/")[2]
            self.fs.copy_file(self.output.path(relative), self.output.path(f"{target}/{name}"))
            self._delete(relative)

    def committed(self, sub: str, manifest: dict[str, Any] | None) -> list[str]:
        named = _named_parts(manifest)
        return [relative for relative in self._listed(sub) if relative in named]

    def part_name(self, number: int) -> str:
        return f"part-{number:05d}-{self.output.token}.parquet"

    def write_part(self, relative: str, table: pa.Table) -> int:
        sink = pa.BufferOutputStream()
        write_parquet(table, sink)
        data = sink.getvalue()
        self._put(relative, data)
        return int(data.size)

    def read_metadata(self, relative: str) -> pq.FileMetaData:
        with damaged_part(self.where(relative)), self.fs.open_input_file(
            self.output.path(relative)
        ) as f:
            return pq.read_metadata(f)

    def read_ids(self, relative: str) -> list[Any]:
        with damaged_part(self.where(relative)):
            table = pq.read_table(
                self.output.path(relative), columns=["id"], filesystem=self.fs
            )
        ids: list[Any] = table.column("id").to_pylist()
        return ids

    def free_bytes(self) -> int:
        return -1

    def dataset_files(self, sub: str) -> tuple[list[str], pafs.FileSystem | None]:
        return [self.output.path(r) for r in self.committed(sub, self.read_manifest())], self.fs

    def fetch(self, relative: str, directory: Path) -> None:
        """Copy the output's file `relative`, if it has one, into the local `directory`."""
        try:
            with self.fs.open_input_stream(self.output.path(relative)) as f:
                data = f.read()
        except FileNotFoundError:
            return
        (directory / relative).write_bytes(data)

    def publish(self, state_dir: Path, relative: str) -> None:
        """Copy the local file `relative` of the state directory to the output (a summary,
        the invalid-lines log, the event log), whole, in one PUT."""
        source = state_dir / relative
        if source.is_file():
            self._put(relative, source.read_bytes())


def _named_parts(manifest: dict[str, Any] | None) -> set[str]:
    if not manifest:
        return set()
    return {str(p.get("path")) for p in manifest.get("parts", []) if isinstance(p, dict)}


def part_store(out_dir: Path, output: OutputURI | None) -> PartStore:
    """The store of a run's output: the URI's when there is one, else the local directory."""
    return ObjectParts(output) if output is not None else LocalParts(out_dir)


def output_for_reading(out: Path | str) -> tuple[PartStore, Path]:
    """The store of an existing output (a directory or a URI, opened without writing) and
    its local state directory (for `gigabatch status`)."""
    if isinstance(out, str) and is_uri(out):
        output = open_output_uri(out, probe=False)
        return ObjectParts(output), output.state_dir
    return LocalParts(Path(out)), Path(out)


def write_parquet(table: pa.Table, sink: Any) -> None:
    """A part's bytes: zstd, dictionaries for every column but lists of floats."""
    pq.write_table(table, sink, compression="zstd", use_dictionary=dictionary_columns(table.schema))


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """The columns Parquet dictionary-encodes: all but lists of floats. An embedding's
    floats are nearly all distinct, so a dictionary only costs time (~35% of a part's
    write for 1024 random float32s) and falls back to plain encoding anyway."""
    return [
        f.name
        for f in schema
        if not (pa.types.is_list(f.type) or pa.types.is_fixed_size_list(f.type))
        or not pa.types.is_floating(f.type.value_type)
    ]
