"""`python -m batch.emulator CONFIG_JSON`: the child side of serve_emulator(subprocess=True).
Prints {"origin": ...} as one JSON line once listening; exits when stdin closes."""

from __future__ import annotations

import sys

import orjson

from batch.emulator.config import EmulatorConfig
from batch.emulator.server import serve_emulator


def main(argv: list[str]) -> None:
    config = EmulatorConfig(**orjson.loads(argv[0]))
    with serve_emulator(config) as emulator:
        sys.stdout.write(orjson.dumps({"origin": emulator.origin}).decode() + "\n")
        sys.stdout.flush()
        sys.stdin.read()


if __name__ == "__main__":
    main(sys.argv[1:])
