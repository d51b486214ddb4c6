"""gigabatch: the batch job runner for the GigaChat API, as a Python library.

    import batch

    summary = batch.run("jobs.jsonl", "out/jobs", max_cost=50)   # like `gigabatch run`
    table = batch.embed(["first text", "second text"])             # a pyarrow.Table
    estimate = batch.estimate("jobs.jsonl", sample=20)             # like `gigabatch estimate`
    page = batch.write_report("out/jobs")                           # like `gigabatch report`
    summary = await batch.arun("jobs.jsonl", "out/jobs")           # in a notebook

Keyword options are the command line's, by name (`--max-cost` -> `max_cost=`), with its
defaults and checks; errors are those of `batch.errors`. The names below are imported on
first use, so `import batch` (and the emulator, which lives in `batch.emulator`) stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from batch.api import arun, estimate, run
    from batch.errors import (
        ApiError,
        AuthenticationFailed,
        BudgetExhausted,
        CacheUnavailable,
        ConfigError,
        FatalError,
        GigabatchError,
        JobFileError,
        PaymentRequired,
        PermissionDenied,
        RowsFailed,
        RunInterrupted,
        RunRefused,
        RunStopped,
        RunTimedOut,
    )
    from batch.estimate_math import Estimate
    from batch.in_memory import achat, aembed, chat, embed
    from batch.report import write_report
    from batch.summary import RunSummary

# Public name -> the module it lives in.
_EXPORTS = {
    "run": "batch.api",
    "arun": "batch.api",
    "estimate": "batch.api",
    "chat": "batch.in_memory",
    "achat": "batch.in_memory",
    "embed": "batch.in_memory",
    "aembed": "batch.in_memory",
    "RunSummary": "batch.summary",
    "Estimate": "batch.estimate_math",
    "write_report": "batch.report",
    **{
        name: "batch.errors"
        for name in (
            "GigabatchError",
            "ConfigError",
            "JobFileError",
            "RunRefused",
            "BudgetExhausted",
            "RunStopped",
            "RowsFailed",
            "RunInterrupted",
            "RunTimedOut",
            "CacheUnavailable",
            "ApiError",
            "FatalError",
            "AuthenticationFailed",
            "PaymentRequired",
            "PermissionDenied",
        )
    },
}

__all__ = [
    "ApiError",
    "AuthenticationFailed",
    "BudgetExhausted",
    "CacheUnavailable",
    "ConfigError",
    "Estimate",
    "FatalError",
    "GigabatchError",
    "JobFileError",
    "PaymentRequired",
    "PermissionDenied",
    "RowsFailed",
    "RunInterrupted",
    "RunRefused",
    "RunStopped",
    "RunSummary",
    "RunTimedOut",
    "__version__",
    "achat",
    "aembed",
    "arun",
    "chat",
    "embed",
    "estimate",
    "run",
    "write_report",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'batch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
