"""The `gigabatch` name: `python -m gigabatch` runs the command line like the `gigabatch`
command does.

The code lives in the `batch` and `jobs` packages. `python -m batch` works too, except in a
directory holding a `batch.py` (or `batch/`) of its own: Python puts the current directory
first on `sys.path` for `-m`, so it would run that file instead. `python -m gigabatch`
checks where `batch` and `jobs` come from before importing them (`shadowed`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGES = ("batch", "jobs")


def shadowed() -> dict[str, str]:
    """The packages of gigabatch that another module of the same name would be imported
    in place of, by package name -> that module's path (empty when none is)."""
    home = Path(__file__).resolve().parent.parent
    found: dict[str, str] = {}
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None else None
        if origin is None or Path(origin).resolve().parent.parent != home:
            found[name] = str(origin or (spec.submodule_search_locations if spec else name))
    return found
