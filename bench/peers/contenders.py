"""Who runs in the peer benchmark: gigabatch's own command and the scripts a user would write
instead (`scripts/`), each started as a child process with the same job file and emulator."""

from __future__ import annotations

import ast
import importlib.util
import io
import sys
import tokenize
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

SCRIPTS = Path(__file__).parent / "scripts"
KINDS = ("chat", "embed")
GIGABATCH = "gigabatch"


@dataclass(frozen=True)
class Contender:
    """One row of the table: a name, how it is started per job kind, and whether it is
    told the server's stream limit (every peer is; gigabatch finds it)."""

    name: str
    scripts: Mapping[str, str] = field(default_factory=dict)
    needs: tuple[str, ...] = ()  # modules the scripts import (optional installs)

    @property
    def is_gigabatch(self) -> bool:
        return self.name == GIGABATCH

    def not_run(self) -> str | None:
        """Why this contender cannot run here, or None when it can."""
        missing = [name for name in self.needs if importlib.util.find_spec(name) is None]
        if missing:
            return f"not run: {', '.join(missing)} missing (pip install -e '.[bench]')"
        return None

    def command(self, kind: str, jobs: Path, out: Path, limit: int) -> list[str]:
        """The child's argv; a peer gets the stream limit, gigabatch does not."""
        if self.is_gigabatch:
            kind_args = ["--kind", "embed"] if kind == "embed" else []
            return [sys.executable, "-m", "batch", "run", str(jobs), "--out", str(out),
                    "--quiet", *kind_args]
        return [sys.executable, str(SCRIPTS / self.scripts[kind]), str(jobs), str(out), str(limit)]

    def user_lines(self, kind: str) -> int | None:
        """Lines of code the user writes for a job of `kind` (gigabatch: its one command)."""
        if self.is_gigabatch:
            return 1
        script = self.scripts.get(kind)
        return code_lines((SCRIPTS / script).read_text(encoding="utf-8")) if script else None


def code_lines(source: str) -> int:
    """Lines holding code: blank lines, comments and docstrings are not counted."""
    docstrings: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            first = node.body[0] if node.body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                docstrings.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    skipped = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
               tokenize.DEDENT, tokenize.ENDMARKER}
    code: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in skipped:
            code.update(range(token.start[0], token.end[0] + 1))
    return len(code - docstrings)


CONTENDERS = (
    Contender(GIGABATCH),
    Contender("SDK naive", {"chat": "sdk_naive_chat.py", "embed": "sdk_naive_embed.py"}),
    Contender("SDK expert", {"chat": "sdk_expert_chat.py", "embed": "sdk_expert_embed.py"}),
    Contender(
        "langchain-gigachat",
        {"chat": "langchain_chat.py", "embed": "langchain_embed.py"},
        needs=("langchain_gigachat",),
    ),
    Contender(
        "Ray Data",
        {"chat": "raydata_chat.py", "embed": "raydata_embed.py"},
        needs=("ray", "aiohttp"),  # ray.data.llm's HTTP stage imports aiohttp
    ),
)
