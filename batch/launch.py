"""From option values to a run or an estimate: the one path `gigabatch run`/`estimate` and
the Python API (`batch.run`, `batch.estimate`) both take.

Values are keyed by each option's `dest` (batch/command_options.py): the command line gets
them from Click, the API from `resolve`. `planned_run` does the blocking set-up (spooling
standard input, the price table, an in-process emulator, the job kind) and yields a
`RunPlan`; `execute_run` runs it on the current event loop.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import orjson
import pyarrow.fs as pafs

from batch.batch_journal import prepare_online_run
from batch.batches_mode import run_batches
from batch.batches_settings import BatchesSettings
from batch.command_options import API_OPTION_NAMES
from batch.errors import ConfigError, single_error
from batch.estimate_math import Estimate
from batch.estimator import EstimateRequest, estimate_jobs
from batch.output_uri import is_uri, resolve_output, shown_uri
from batch.pricing import PriceTable
from batch.progress import ProgressMode
from batch.retry import RetryPolicy
from batch.run_config import RunConfig
from batch.runner import run_jobs
from batch.settings import ClientSettings
from batch.storage import check_output_dir
from batch.summary import RunSummary
from jobs.base import JobKind
from jobs.registry import cli_options, kind_from_values
from jobs.sources import SPOOL_DIR, spooled_input, temporary_spool

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup


def settings_from_options(options: MutableMapping[str, Any]) -> ClientSettings:
    """Pop the connection options' values out of `options` and build settings: options
    that were given win, `GIGACHAT_*` variables fill in the rest."""
    given = {name: options.pop(name, None) for name in API_OPTION_NAMES}
    return ClientSettings.from_env(**given)


def build_kind(options: MutableMapping[str, Any], model_default: str | None = None) -> JobKind:
    """Pop the kind options out of `options` and build the job kind."""
    name = options.pop("kind")
    values = {o.field: options.pop(o.field, None) for o in cli_options()}
    values["model"] = values.get("model") or model_default
    return kind_from_values(name, values)


def _emulator_knobs(pairs: tuple[str, ...]) -> dict[str, Any]:
    knobs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise ConfigError(f"--emulator-option expects KEY=VALUE, got {pair!r}")
        try:
            knobs[key.strip()] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            knobs[key.strip()] = raw
    return knobs


def require_auth(settings: ClientSettings, alternative: str = "") -> None:
    """ConfigError, in one line saying what to set, when `settings` has no way to
    authenticate; checked before anything is created on disk."""
    if not settings.has_auth:
        raise ConfigError(
            "no credentials: set GIGACHAT_CREDENTIALS (or GIGACHAT_ACCESS_TOKEN, "
            "GIGACHAT_USER and GIGACHAT_PASSWORD, or GIGACHAT_CERT_FILE)"
            + (alternative or ", or rehearse with --emulator")
        )


def _scope_given(options: MutableMapping[str, Any]) -> bool:
    """Whether the user's settings name a scope (an option or GIGACHAT_SCOPE)."""
    return bool(options.get("scope") or os.environ.get("GIGACHAT_SCOPE", "").strip())


@contextlib.contextmanager
def api_settings(
    options: MutableMapping[str, Any],
    emulator: bool = False,
    profile_name: str = "b2b",
    knobs: tuple[str, ...] = (),
) -> Iterator[ClientSettings]:
    """The client settings: from options and GIGACHAT_* variables, or those of an emulator
    started in this process for the duration of the block. The emulator keeps what the
    user's settings say about answers (the model, the scope, the timeout) and replaces only
    where requests go and the key they carry."""
    if not emulator:
        yield settings_from_options(options)
        return
    from batch.emulator import EmulatorUnavailable, profile, require_server_packages, serve_emulator

    scope_given = _scope_given(options)
    user = settings_from_options(options)
    # A rehearsal is granted the scope the real run would ask for, and its stream limit.
    scoped = {"scope": user.scope} if scope_given else {}
    try:
        require_server_packages()
        config = profile(profile_name, **{**scoped, **_emulator_knobs(knobs)})
    except EmulatorUnavailable as exc:
        raise ConfigError(str(exc)) from None
    except ValueError as exc:
        raise ConfigError(f"emulator: {exc}") from None
    with serve_emulator(config) as emu:
        # The emulator's variables for where to send and with which key; the rest is the user's.
        yield ClientSettings.from_env(emu.client_env(), timeout=user.timeout, model=user.model)


def pop_batches_options(options: MutableMapping[str, Any]) -> tuple[str, BatchesSettings]:
    """Pop `--mode` and the batch API's options out of `options`: the mode, the settings."""
    mode = str(options.pop("mode"))
    settings = BatchesSettings(
        max_lines=options.pop("batch_lines"),
        max_bytes=options.pop("batch_bytes"),
        completion_window_s=options.pop("completion_window"),
        completion_timeout_s=options.pop("completion_timeout"),
        poll_initial_s=options.pop("poll_interval"),
        poll_max_s=options.pop("poll_max"),
    )
    return mode, settings


@dataclass(frozen=True)
class RunPlan:
    """A run set up and ready to execute: its config, its mode and the batch API's settings."""

    config: RunConfig
    mode: str
    batches: BatchesSettings


@contextlib.contextmanager
def planned_run(
    jobs: Path,
    out: Path | str,
    values: MutableMapping[str, Any],
    *,
    progress: ProgressMode,
    filesystem: pafs.FileSystem | None = None,
) -> Iterator[RunPlan]:
    """Set up the run of `jobs` into `out` (a directory, an output URI, or a path on
    `filesystem`) from `run`'s option values (consumed): the plan lives as long as the
    block (an emulator started for it stops at its end)."""
    mode, batch_settings = pop_batches_options(values)
    ray, ray_workers = values.pop("ray"), values.pop("ray_workers")
    if ray is not None and mode == "batches":
        raise ConfigError("--ray runs the online API; drop it with --mode batches")
    if ray_workers is not None and ray is None:
        raise ConfigError("--ray-workers needs --ray")
    prices = PriceTable.load(values.pop("prices"))
    emulator = (values.pop("emulator"), values.pop("emulator_profile"))
    with api_settings(values, *emulator, tuple(values.pop("emulator_knobs"))) as settings:
        kind = build_kind(values, settings.model)
        # Nothing is created on disk (the spool of `-`, the output) before these hold.
        require_auth(settings)
        out_dir, output = resolve_output(
            out, state_dir=values.pop("state_dir"), filesystem=filesystem
        )
        check_output_dir(out_dir)
        jobs = spooled_input(jobs, out_dir / SPOOL_DIR)
        config = RunConfig(
            jobs_path=jobs,
            out_dir=out_dir,
            output=output,
            kind=kind,
            client_settings=settings,
            max_concurrency=values.pop("max_concurrency"),
            retry=RetryPolicy(
                max_attempts=values.pop("max_attempts"),
                max_elapsed=values.pop("max_elapsed"),
                max_retry_after=values.pop("max_retry_after"),
            ),
            max_outage=values.pop("max_outage"),
            flush_interval=values.pop("flush_interval"),
            grace_period=values.pop("grace_period"),
            disk_wait=values.pop("disk_wait"),
            skip_invalid=values.pop("skip_invalid"),
            restart=values.pop("restart"),
            retry_failed=values.pop("retry_failed"),
            prices=prices,
            max_cost=values.pop("max_cost"),
            max_tokens=values.pop("max_tokens_budget"),
            keep_columns=tuple(values.pop("keep_columns")),
            cache=values.pop("cache"),
            cache_dir=values.pop("cache_dir"),
            changed_since=values.pop("changed_since"),
            ray=ray,
            ray_workers=ray_workers,
            progress=progress,
        )
        yield RunPlan(config, mode, batch_settings)


async def execute_run(plan: RunPlan) -> RunSummary:
    """Run `plan` to its end on the current event loop (online, or through the batch API).
    An error out of the engine's task groups is raised alone, not in an exception group."""
    config = plan.config
    try:
        if plan.mode == "batches":
            return await run_batches(config, plan.batches)
        await anyio.to_thread.run_sync(
            partial(prepare_online_run, config.out_dir, restart=config.restart)
        )
        return await run_jobs(config)
    except BaseExceptionGroup as group:
        raise single_error(group) from None


def _online_settings(
    stack: contextlib.ExitStack,
    api: dict[str, Any],
    emulator: tuple[bool, str, tuple[str, ...]],
) -> ClientSettings:
    """The client settings (of an emulator kept running in `stack` with --emulator);
    ConfigError without credentials."""
    settings = stack.enter_context(api_settings(api, *emulator))
    require_auth(settings, ", or use --offline or --emulator")
    return settings


def estimate_from_options(jobs: Path, values: MutableMapping[str, Any]) -> Estimate:
    """The estimate of `jobs` from `estimate`'s option values (consumed)."""
    offline, sample, out = values.pop("offline"), values.pop("sample"), values.pop("out")
    emulator, mode = values.pop("emulator"), values.pop("mode")
    emulation = (emulator, values.pop("emulator_profile"), tuple(values.pop("emulator_knobs")))
    if offline and (sample or emulator):
        raise ConfigError("--offline sends no requests: it cannot take --sample or --emulator")
    if out is not None and not sample:
        raise ConfigError("--out keeps the answers of --sample N: give --sample too")
    out = None if out is None else local_sample_dir(out)
    api = {name: values.pop(name) for name in API_OPTION_NAMES}
    prices = PriceTable.load(values.pop("prices_path"))
    if mode == "batches":
        prices = prices.for_batches()
    counting = {
        "seed": values.pop("seed"),
        "confidence": values.pop("confidence"),
        "max_concurrency": values.pop("max_concurrency"),
        "message_overhead": values.pop("message_overhead"),
        "skip_invalid": values.pop("skip_invalid"),
        "quiet": values.pop("quiet"),
        "keep_columns": tuple(values.pop("keep_columns")),
        "cache": values.pop("cache"),
        "cache_dir": values.pop("cache_dir"),
    }
    with contextlib.ExitStack() as stack:
        jobs = stack.enter_context(temporary_spool(jobs))
        settings = None if offline else _online_settings(stack, api, emulation)
        # Offline there are no settings to read, but GIGACHAT_MODEL still names the model.
        model_default = (
            settings.model if settings is not None else os.environ.get("GIGACHAT_MODEL") or None
        )
        request = EstimateRequest(
            jobs_path=jobs,
            make_kind=partial(_fresh_kind, dict(values), model_default),
            prices=prices,
            client_settings=settings,
            sample=sample,
            out=out,
            **counting,
        )
        return estimate_jobs(request)


def _fresh_kind(values: dict[str, Any], model_default: str | None) -> JobKind:
    return build_kind(dict(values), model_default)


def local_sample_dir(out: str) -> Path:
    """`estimate --out`: the local directory that keeps sampled answers as a checkpoint."""
    if is_uri(out):
        raise ConfigError(
            f"estimate --out {shown_uri(out)}: sampled answers are kept in a local directory; "
            "give one, then run with the same --out (or estimate without --out)"
        )
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"estimate --out {out}: is a file, not a directory")
    return path
