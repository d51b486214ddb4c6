"""Why rows failed, read back from an output directory's `failed/` parts: a count and one
example per error class, for the end-of-run summary and the run report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as ds

from batch.layout import FAILED
from batch.part_store import LocalParts, PartStore

# The example's message is cut here: the summary shows it on one line.
_EXAMPLE_CHARS = 200


@dataclass(frozen=True, slots=True)
class FailureClass:
    """The failed rows of one error class: how many, and the first one's id and message."""

    error_class: str
    count: int
    example_id: str
    example_message: str

    def to_json(self) -> dict[str, object]:
        return {
            "count": self.count,
            "example": {"id": self.example_id, "message": self.example_message},
        }


def failure_classes(output: Path | PartStore) -> list[FailureClass]:
    """The failed rows of an output directory (or store) by error class, most frequent
    first (ties by name)."""
    store = LocalParts(output) if isinstance(output, Path) else output
    files, filesystem = store.dataset_files(FAILED)
    if not files:
        return []
    dataset = ds.dataset(files, format="parquet", filesystem=filesystem)
    counts: dict[str, int] = {}
    examples: dict[str, tuple[str, str]] = {}
    # Counted column-wise: a million failed rows are not turned into Python rows.
    for batch in dataset.to_batches(columns=["id", "error_class", "message"]):
        classes = batch.column("error_class")
        for entry in pc.value_counts(classes).to_pylist():
            name = str(entry["values"])
            counts[name] = counts.get(name, 0) + entry["counts"]
            if name not in examples:
                at = pc.index(classes, entry["values"]).as_py()
                examples[name] = (
                    str(batch.column("id")[at].as_py()),
                    _one_line(batch.column("message")[at].as_py()),
                )
    ordered = sorted(counts, key=lambda name: (-counts[name], name))
    return [FailureClass(name, counts[name], *examples[name]) for name in ordered]


def _one_line(message: object) -> str:
    text = " ".join(str(message or "").split())
    return text if len(text) <= _EXAMPLE_CHARS else text[: _EXAMPLE_CHARS - 1] + "…"
