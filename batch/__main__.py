"""`python -m batch` runs the gigabatch command line."""

from batch.cli import main

main()
