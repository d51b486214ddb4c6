"""Pass-through columns (`--keep-columns`): input columns copied, with their types, into
every row of results/ and failed/, so the output needs no join back to the input.

Two passes, like the run itself. Validation reads every record, so it also settles each kept
column's Arrow type (`ColumnTypes`): Parquet columns keep the file's type; JSONL columns are
inferred over the whole input, so every part of a run gets the same schema. The run's read
then attaches each job's values, converted to that schema (`KeptColumns.values`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from batch.errors import JobFileError
from jobs.base import SourceLocation
from jobs.sources import input_files, sniff

ALL = "*"
PREFIX = "input_"
_INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True, slots=True)
class KeepSpec:
    """Which input columns to keep: `names` in order, or with `everything` every column that
    is not one of the kind's own fields (`job_fields`); `copied` are job fields kept as well
    (the user's id column), whose values the kind still reads."""

    names: tuple[str, ...]
    everything: bool
    job_fields: frozenset[str]
    reserved: frozenset[str]

    @classmethod
    def parse(
        cls,
        columns: Sequence[str],
        *,
        job_fields: Iterable[str],
        reserved: Iterable[str],
        id_column: str | None = None,
    ) -> KeepSpec:
        """From `--keep-columns a,b` (or `*`) and the kind: `reserved` are the output's own
        columns, which a kept column does not replace (see `output_name`). A user-named id
        column is kept under its name, with its type, beside the engine's string `id`."""
        names = [c.strip() for part in columns for c in part.split(",") if c.strip()]
        everything = ALL in names
        names = [n for n in names if n != ALL]
        if id_column and id_column != "id" and id_column not in names:
            names.insert(0, id_column)
        return cls(
            tuple(dict.fromkeys(names)), everything, frozenset(job_fields), frozenset(reserved)
        )

    @property
    def active(self) -> bool:
        return self.everything or bool(self.names)

    def output_name(self, name: str) -> str:
        """The kept column's name in the output: its own, or `input_<name>` when the output
        has a column of that name already (a corpus's `source` beside failed/'s `source`)."""
        return f"{PREFIX}{name}" if name in self.reserved else name

    def wanted(self, name: str) -> bool:
        return name in self.names or (self.everything and name not in self.job_fields)

    def split(self, record: dict[str, Any]) -> dict[str, Any]:
        """Take the kept values out of `record` (job fields are copied, the rest removed, so
        the kind does not see them as unknown keys)."""
        kept = {}
        for key in [k for k in record if self.wanted(k)]:
            kept[key] = record[key] if key in self.job_fields else record.pop(key)
        return kept

    def read_columns(self, sources: Iterable[str]) -> list[str] | None:
        """The Parquet columns to read: the kind's and the kept ones (None: every column)."""
        return None if self.everything else [*sources, *self.names]

    def settings(self) -> dict[str, Any]:
        """The output's setting: the schema of its rows depends on it, so a resume with
        other kept columns is refused. Empty (absent) when nothing is kept."""
        if not self.active:
            return {}
        return {"keep_columns": [*self.names, *([ALL] if self.everything else [])]}


@dataclass
class ColumnTypes:
    """The kept columns' types, learned from the validation pass: what JSONL values hold,
    what Parquet files declare."""

    spec: KeepSpec
    _seen: dict[str, set[str]] = field(default_factory=dict)

    def observe(self, location: SourceLocation, kept: Mapping[str, Any]) -> None:
        for name, value in kept.items():
            seen = self._seen.setdefault(name, set())
            if location.unit == "line":
                seen.add(_json_kind(value))

    def schema(self, path: Path, *, strict: bool = True) -> KeptColumns:
        """The kept columns' schema for the input at `path`; JobFileError when Parquet files
        disagree on a column's type, or (`strict`) when a named column is in no valid record
        (an input with problems is not strict: its problems are the news)."""
        declared = _parquet_types(path, self.spec)
        names = list(self.spec.names)
        names += [n for n in declared if n not in names]
        names += [n for n in self._seen if n not in names]
        missing = [n for n in self.spec.names if n not in self._seen and n not in declared]
        if missing and strict:
            raise JobFileError(
                f"{path}: --keep-columns: no record has {', '.join(repr(n) for n in missing)}"
            )
        fields, json_columns = [], set()
        for name in names:
            kinds = frozenset(self._seen.get(name, set()) - {"null"})
            inferred = _SCALARS.get(kinds, pa.string()) if kinds else None
            if kinds and kinds not in _SCALARS:
                if name in declared:
                    raise JobFileError(
                        f"{path}: --keep-columns: column '{name}' is {declared[name]} in "
                        "Parquet but holds objects, arrays or mixed types in JSONL"
                    )
                json_columns.add(name)
            type_ = _merged(path, name, declared.get(name), inferred)
            fields.append(pa.field(self.spec.output_name(name), type_))
        schema = pa.schema(fields)
        if len(set(schema.names)) < len(names):
            raise JobFileError(
                f"{path}: --keep-columns: two columns would be stored as one of "
                f"{', '.join(schema.names)}; rename one in the input"
            )
        return KeptColumns(self.spec, schema, tuple(names), frozenset(json_columns))


@dataclass(frozen=True, slots=True)
class KeptColumns:
    """The kept columns of a run: which (`spec`), their output schema, the input column of
    each of its fields (`sources`), and which hold JSON text (JSONL values that are objects,
    arrays, or of mixed types)."""

    spec: KeepSpec
    schema: pa.Schema
    sources: tuple[str, ...]
    json_columns: frozenset[str] = frozenset()

    def extend(self, schema: pa.Schema) -> pa.Schema:
        """`schema` (of results/ or failed/) with the kept columns after its own."""
        return pa.schema([*schema, *self.schema], metadata=schema.metadata)

    def values(self, kept: Mapping[str, Any]) -> dict[str, Any]:
        """A job's kept values as the writer stores them (absent columns are null)."""
        out = {}
        for name, source in zip(self.schema.names, self.sources, strict=True):
            value = kept.get(source)
            if source in self.json_columns and value is not None:
                value = orjson.dumps(value).decode()
            out[name] = value
        return out


# JSONL value kinds and the Arrow type a column of only those kinds gets; any other mix
# (objects, arrays, strings with numbers...) is stored as JSON text.
_SCALARS = {
    frozenset({"bool"}): pa.bool_(),
    frozenset({"int"}): pa.int64(),
    frozenset({"float"}): pa.float64(),
    frozenset({"int", "float"}): pa.float64(),
    frozenset({"str"}): pa.string(),
}


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if _INT64[0] <= value <= _INT64[1] else "json"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    return "json"


def _parquet_types(path: Path, spec: KeepSpec) -> dict[str, pa.DataType]:
    """Kept columns' types as the Parquet files of the input declare them, unified."""
    types: dict[str, pa.DataType] = {}
    for file in input_files(path):
        if sniff(file) != "parquet":
            continue
        for f in pq.read_schema(file):
            if spec.wanted(f.name):
                types[f.name] = _merged(file, f.name, types.get(f.name), f.type)
    return types


def _merged(
    path: Path, name: str, old: pa.DataType | None, new: pa.DataType | None
) -> pa.DataType:
    if old is None or new is None or old == new:
        return old or new or pa.string()
    try:
        unified = pa.unify_schemas(
            [pa.schema([(name, old)]), pa.schema([(name, new)])], promote_options="permissive"
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        raise JobFileError(
            f"{path}: --keep-columns: column '{name}' is {old} in one file and {new} in "
            "another; make them agree"
        ) from None
    return unified.field(name).type
