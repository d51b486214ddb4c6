"""The Python API's runs: `run`/`arun` and `estimate`, the library face of `gigabatch run`
and `gigabatch estimate`.

Keyword arguments are the commands' options (checked against batch/command_options.py and
the job kinds' options), and the set-up is the commands' own (batch/launch.py). What this
module adds is the calling context: any thread (signals are the main thread's only), an
event loop already running (Jupyter: `await arun(...)`), no state shared between two
calls, progress only where someone watches, and errors from batch/errors.py, never an
exception group.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any, cast

import anyio
import anyio.to_thread
import pyarrow.fs as pafs
import sniffio

from batch.command_options import API_OPTIONS, BATCHES_OPTIONS, ESTIMATE_OPTIONS, RUN_OPTIONS
from batch.errors import ConfigError
from batch.estimate_math import Estimate
from batch.launch import RunPlan, estimate_from_options, execute_run, planned_run
from batch.options import Option, resolve
from batch.output_uri import is_uri
from batch.progress import ProgressMode
from batch.summary import RunSummary
from jobs.registry import DEFAULT_KIND, cli_options

JobsPath = str | os.PathLike[str]


def run_options() -> tuple[Option, ...]:
    """Every keyword `run`/`arun` take: the job kinds', `gigabatch run`'s, the batch API's
    and the connection's (kinds registered later are included)."""
    kinds = tuple(Option.of_kind(o) for o in cli_options())
    return (*kinds, *RUN_OPTIONS, *BATCHES_OPTIONS, *API_OPTIONS)


def in_event_loop() -> bool:
    """Whether the calling thread is running an event loop (a Jupyter cell runs in one)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        try:
            sniffio.current_async_library()
        except sniffio.AsyncLibraryNotFoundError:
            return False
    return True


def refuse_in_event_loop(call: str, async_call: str) -> None:
    """ConfigError when `call` (blocking) is made from a running event loop."""
    if in_event_loop():
        raise ConfigError(
            f"{call}() cannot run inside a running event loop (a Jupyter notebook runs "
            f"one): use `await {async_call}(...)` with the same arguments"
        )


def interactive() -> bool:
    """Whether someone watches: an IPython/Jupyter session, or stderr on a terminal."""
    ipython = sys.modules.get("IPython")
    if ipython is not None and getattr(ipython, "get_ipython", lambda: None)() is not None:
        return True
    return sys.stderr is not None and sys.stderr.isatty()


def _progress_mode(progress: str, quiet: bool) -> ProgressMode:
    if quiet:
        return "off"
    if progress == "auto":
        return "bar" if interactive() else "off"
    return cast(ProgressMode, progress)


def _existing_jobs(jobs: JobsPath) -> Path:
    path = Path(jobs)
    if str(path) != "-" and not path.exists():
        raise ConfigError(f"jobs: no such file or directory: {path}")
    return path


def _output_dir(out: JobsPath, filesystem: pafs.FileSystem | None) -> Path | str:
    """A local output directory, or an output URI (or path on `filesystem`) as given."""
    if filesystem is not None or is_uri(out):
        return os.fspath(out)
    path = Path(out)
    if path.is_file():
        raise ConfigError(f"out: {path} is a file, not a directory")
    return path


def run(
    jobs: JobsPath,
    out: JobsPath,
    *,
    kind: str = DEFAULT_KIND,
    check: bool = True,
    filesystem: pafs.FileSystem | None = None,
    **options: Any,
) -> RunSummary:
    """Answer every job of `jobs` into the output directory `out`, like `gigabatch run
    JOBS --out OUT`, and return the run's summary. Resumable: the same call again sends
    only what is not answered yet.

    `options` are `gigabatch run`'s options by their flag's name (`--max-cost` ->
    `max_cost=`), with the same defaults and checks; `progress` ("auto", "bar", "log",
    "off") draws a text bar when interactive by default. With `check` (the default), a run
    that `gigabatch run` would exit non-zero for raises (`RunSummary.raise_for_status`).
    What stops a run before its first job raises whatever `check` says: invalid input or
    options, no credentials, a directory in use, and settings the start-up check refuses
    (rejected credentials, a wrong URL or model). Callable from any thread; inside a running
    event loop, `await arun(...)` instead.

    `out` may be a filesystem URI (`s3://bucket/run`, `gs://...`, `file:///...`; see the
    README's "Output on shared storage"), or a path on a pyarrow `filesystem` given here.

        >>> import batch
        >>> summary = batch.run("sample_jobs/chat.jsonl", "out/chat", emulator=True)
        >>> print(summary.status, summary.succeeded, summary.cost, summary.currency)
    """
    refuse_in_event_loop("batch.run", "batch.arun")
    call = partial(arun, jobs, out, kind=kind, check=check, filesystem=filesystem, **options)
    return anyio.run(call)


async def arun(
    jobs: JobsPath,
    out: JobsPath,
    *,
    kind: str = DEFAULT_KIND,
    check: bool = True,
    filesystem: pafs.FileSystem | None = None,
    **options: Any,
) -> RunSummary:
    """`run` on the running event loop (asyncio or trio): `await batch.arun(...)` in a
    notebook. The blocking set-up (validation, an emulator) runs in a worker thread.

        >>> summary = await batch.arun("sample_jobs/chat.jsonl", "out/chat", emulator=True)
    """
    values = resolve(options, run_options(), call="batch.run")
    values["kind"] = kind
    progress = _progress_mode(values.pop("progress"), values.pop("quiet"))
    setup = partial(
        planned_run,
        _existing_jobs(jobs),
        _output_dir(out, filesystem),
        values,
        progress=progress,
        filesystem=filesystem,
    )
    async with _in_thread(setup) as plan:
        summary = await execute_run(plan)
    if check:
        summary.raise_for_status()
    return summary


@contextlib.asynccontextmanager
async def _in_thread(
    setup: Callable[[], contextlib.AbstractContextManager[RunPlan]],
) -> AsyncIterator[RunPlan]:
    """Enter and leave the blocking context manager `setup()` in worker threads (its exit is
    shielded, so a cancelled run still stops the emulator it started)."""
    manager = setup()
    plan = await anyio.to_thread.run_sync(manager.__enter__)
    try:
        yield plan
    except BaseException as exc:
        with anyio.CancelScope(shield=True):
            exit_ = partial(manager.__exit__, type(exc), exc, exc.__traceback__)
            if not await anyio.to_thread.run_sync(exit_):
                raise
    else:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(manager.__exit__, None, None, None)


def estimate(jobs: JobsPath, *, kind: str = DEFAULT_KIND, **options: Any) -> Estimate:
    """Tokens and cost of `jobs` before running them, like `gigabatch estimate JOBS`:
    `options` are its options by name (`sample=`, `offline=`, `prices=`...). Quiet
    unless interactive; from a running event loop it runs in a thread of its own.

        >>> e = batch.estimate("sample_jobs/chat.jsonl", offline=True)
        >>> print([(m.model, m.input_tokens, m.cost) for m in e.models])
    """
    offered = (*(Option.of_kind(o) for o in cli_options()), *ESTIMATE_OPTIONS, *API_OPTIONS)
    values = resolve(options, offered, call="batch.estimate")
    values["kind"] = kind
    if "quiet" not in options:
        values["quiet"] = not interactive()
    task = partial(estimate_from_options, _existing_jobs(jobs), values)
    if not in_event_loop():
        return task()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="gigabatch") as pool:
        return pool.submit(task).result()
