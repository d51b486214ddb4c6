"""`python -m batch` runs the gigabatch command line. Prefer `gigabatch` or
`python -m gigabatch`: in a directory with a `batch.py` of its own, `python -m batch` runs
that file instead (see gigabatch/__init__.py)."""

from batch.cli import main

main(prog_name="gigabatch")
