"""`python -m gigabatch`: the command line, with gigabatch's own `batch` and `jobs` even in
a directory that holds a `batch.py` or `jobs.py` of its own."""

import sys
from pathlib import Path

from gigabatch import shadowed

if shadowed():
    # `-m` put the current directory first on sys.path; gigabatch needs nothing from it.
    here = str(Path.cwd())
    sys.path[:] = [p for p in sys.path if p not in ("", here)]
    left = shadowed()
    if left:
        where = ", ".join(f"{name} from {path}" for name, path in left.items())
        sys.exit(f"error: gigabatch's packages are shadowed ({where}): rename those modules")

from batch.cli import main

main(prog_name="gigabatch")
