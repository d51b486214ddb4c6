"""`gigabatch estimate`: tokens, cost and balance for a job file before it runs.

Input tokens come from `/tokens/count` (exact) or from characters (`--offline`); output
tokens from `max_tokens` (a bound) or from a random sample of jobs answered for real through
the run engine (`--sample N`), checkpointed in `--out` so the run does not pay for them
twice. The arithmetic is in batch/estimate.py, the counting pass in batch/counting.py.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
import click
import orjson
import pyarrow.parquet as pq

from batch.api_types import Usage
from batch.checkpoint import FAILED, RESULTS
from batch.cli import main
from batch.cli.common import API_OPTION_NAMES, api_options, cli_errors

# The run command's job-kind options and connection set-up: estimate takes the same
# settings so its sample checkpoint is one `run` resumes.
from batch.cli.run import api_settings, build_kind, kind_options, max_concurrency_option
from batch.client import GigaChatClient
from batch.counting import (
    InputCounter,
    count_jobs,
    count_offline,
    limited_counter,
    measure_overhead,
)
from batch.errors import ApiError, ConfigError, PermissionDenied
from batch.estimate import (
    BalanceReport,
    Calibration,
    Estimate,
    Kind,
    Reservoir,
    SampleReport,
    Tally,
    build_estimate,
    check_balance,
    estimate_to_json,
    render_table,
)
from batch.limiter import AdaptiveLimiter
from batch.pricing import PriceTable
from batch.retry import RetryPolicy
from batch.runner import RunConfig, run_jobs
from batch.settings import ClientSettings
from jobs.base import Job, JobKind
from jobs.chat import DEFAULT_COMPLETION_RESERVE
from jobs.readers import read_jobs, validate_jobs
from jobs.sources import temporary_spool
from jobs.token_counts import EMBEDDING_OVERHEAD, MESSAGE_OVERHEAD


@dataclass(frozen=True)
class EstimateRequest:
    """What one `gigabatch estimate` was asked to do. `make_kind` builds the job kind with
    the command's settings (afresh for the sample run, as `run` would)."""

    jobs_path: Path
    make_kind: Callable[[], JobKind]
    prices: PriceTable
    sample: int | None
    seed: int | None
    confidence: float
    out: Path | None
    max_concurrency: int
    message_overhead: int
    skip_invalid: bool
    quiet: bool


def _kind_name(kind: JobKind) -> Kind:
    if kind.name not in ("chat", "embed"):
        raise ConfigError(f"gigabatch estimate does not know job kind '{kind.name}'")
    return "chat" if kind.name == "chat" else "embed"


class _ProgressLine:
    """The counting pass's progress on stderr: a live line on a terminal, a line every few
    seconds otherwise, nothing with --quiet."""

    def __init__(self, counter: InputCounter, total: int, quiet: bool) -> None:
        self.counter = counter
        self.total = total
        self.quiet = quiet
        self.tty = sys.stderr.isatty()

    def draw(self, *, final: bool = False) -> None:
        if self.quiet:
            return
        line = self.counter.stats.line(self.total)
        if self.tty:
            sys.stderr.write("\r\x1b[2K" + line + ("\n" if final else ""))
        else:
            sys.stderr.write(time.strftime("%H:%M:%S ") + line + "\n")
        sys.stderr.flush()

    async def run(self) -> None:
        while True:
            await anyio.sleep(0.5 if self.tty else 5.0)
            self.draw()


async def _balance(client: GigaChatClient) -> BalanceReport:
    try:
        entries = await client.balance()
    except PermissionDenied:
        return BalanceReport(None, [], note="HTTP 403: not a prepaid account, no balance to show")
    except ApiError as exc:
        return BalanceReport(None, [], note=f"could not be read: {exc}")
    return BalanceReport(entries, [])


async def _count_online(
    request: EstimateRequest,
    settings: ClientSettings,
    jobs: Iterator[Job],
    counter: InputCounter,
    total: int,
) -> BalanceReport:
    """The counting pass against the API, then the balance."""
    progress = _ProgressLine(counter, total, request.quiet)
    async with GigaChatClient(settings, max_connections=request.max_concurrency) as client:
        limiter = AdaptiveLimiter(request.max_concurrency)
        count = limited_counter(client.tokens_count, limiter, RetryPolicy())
        failure: ApiError | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(progress.run)
            try:
                await count_jobs(jobs, counter, count, workers=request.max_concurrency)
            except ApiError as exc:  # raised as itself, not inside a task group's error
                failure = exc
            tg.cancel_scope.cancel()
        if failure is not None:
            raise failure
        progress.draw(final=True)
        return await _balance(client)


@dataclass
class _Sampled:
    """What the sampled jobs' answers in the output directory say."""

    completion: dict[str, list[int]] = field(default_factory=dict)  # by requested model
    prompt: dict[str, int] = field(default_factory=dict)  # by id, cached tokens included
    failed: int = 0
    usage: Usage = field(default_factory=Usage)
    cost: float = 0.0


def _read_sampled(out: Path, wanted: dict[str, str], prices: PriceTable) -> _Sampled:
    """The answers and failures of the sampled jobs in `out`."""
    found = _Sampled()
    columns = ["id", "model", "prompt_tokens", "completion_tokens", "precached_prompt_tokens"]
    for part in sorted((out / RESULTS).glob("*.parquet")):
        for row in pq.read_table(part, columns=columns).to_pylist():
            requested = wanted.get(row["id"])
            if requested is None:
                continue
            used = Usage(
                row["prompt_tokens"] or 0,
                row["completion_tokens"] or 0,
                row["precached_prompt_tokens"] or 0,
            )
            found.completion.setdefault(requested, []).append(used.completion_tokens)
            found.prompt[row["id"]] = used.prompt_tokens + used.precached_prompt_tokens
            found.usage = found.usage + used
            found.cost += prices.cost(row["model"] or requested, used)
    for part in sorted((out / FAILED).glob("*.parquet")):
        ids = pq.read_table(part, columns=["id"]).column("id").to_pylist()
        found.failed += sum(1 for job_id in ids if job_id in wanted)
    return found


async def _run_sample(
    request: EstimateRequest,
    settings: ClientSettings,
    sampler: Reservoir[tuple[Job, str]],
    out: Path,
) -> tuple[dict[str, list[int]], SampleReport, Calibration]:
    """Answer the sampled jobs for real, through the run engine, into `out`; then measure
    the per-message overhead their prompts were billed."""
    wanted = {job.id: model for job, model in sampler.items}
    config = RunConfig(
        jobs_path=request.jobs_path,
        out_dir=out,
        kind=request.make_kind(),
        client_settings=settings,
        max_concurrency=request.max_concurrency,
        prices=request.prices,
        skip_invalid=request.skip_invalid,
        job_filter=lambda job: job.id in wanted,
        progress="off" if request.quiet else "auto",
        handle_signals=False,
    )
    summary = await run_jobs(config)
    if summary.status == "fatal":
        raise ApiError(f"the sample run stopped: {summary.message}")
    found = await anyio.to_thread.run_sync(_read_sampled, out, wanted, request.prices)
    answered = [(job, found.prompt[job.id]) for job, _ in sampler.items if job.id in found.prompt]
    async with GigaChatClient(settings, max_connections=4) as client:
        count = limited_counter(client.tokens_count, AdaptiveLimiter(4), RetryPolicy())
        calibration = await measure_overhead(answered, count, assumed=request.message_overhead)
    report = SampleReport(
        requested=len(wanted),
        answered=len(answered),
        failed=found.failed,
        completion_tokens=found.usage.completion_tokens,
        prompt_tokens=found.usage.prompt_tokens,
        cost=found.cost,
        out=str(out),
        confidence=request.confidence,
    )
    return found.completion, report, calibration


def _output_method(tally: Tally, report: SampleReport | None, confidence: float) -> str:
    if tally.kind == "embed":
        return "embeddings have no output tokens"
    if report is not None:
        return (
            f"projected from {report.answered} randomly sampled jobs answered for real "
            f"({confidence:.0%} Student-t interval with finite-population correction)"
        )
    defaulted = sum(m.rows_default_bound for m in tally.models.values())
    default = (
        f"; {defaulted:,} rows without max_tokens counted at {DEFAULT_COMPLETION_RESERVE}, "
        "the cap a budgeted run sends (a run without a budget does not cap them)"
        if defaulted
        else ""
    )
    return f"between 0 and the max_tokens bound{default}; use --sample N for an expected value"


def estimate_jobs(request: EstimateRequest, settings: ClientSettings | None) -> Estimate:
    """Validate, count, sample and price a job file; the CLI's whole job, callable from code.
    Without `settings` nothing is sent: input tokens are approximated from characters."""
    kind = request.make_kind()
    report = validate_jobs(request.jobs_path, kind)
    if not request.skip_invalid:
        report.raise_for_problems()
    jobs = read_jobs(
        request.jobs_path, kind, skip_invalid=request.skip_invalid, exclude=report.duplicates
    )
    tally = Tally(_kind_name(kind))
    sampler: Reservoir[tuple[Job, str]] | None = (
        Reservoir(request.sample, request.seed) if request.sample and kind.name == "chat" else None
    )
    counter = InputCounter(kind, tally, message_overhead=request.message_overhead, sampler=sampler)
    notes: list[str] = []
    if kind.name == "chat":
        notes.append(
            f"chat input includes {request.message_overhead} tokens per message that the API "
            "bills beyond /tokens/count (role and separators; --message-overhead)"
        )
    else:
        notes.append(
            f"embedding input includes {EMBEDDING_OVERHEAD} tokens per text beyond /tokens/count"
        )
    if request.sample and kind.name != "chat":
        notes.append("--sample ignored: embeddings have no output tokens to project")
    if settings is None:
        count_offline(jobs, counter)
        return build_estimate(
            tally,
            request.prices,
            source=str(request.jobs_path),
            exact_input=False,
            output_method=_output_method(tally, None, request.confidence),
            notes=notes,
        )
    balance = anyio.run(_count_online, request, settings, jobs, counter, report.jobs)
    if counter.stats.over_limit:
        notes.append(
            f"{counter.stats.over_limit} texts exceed the model's input limit: the run "
            + (
                "truncates them (counted at the limit)"
                if kind.answer_settings().get("on_long_text") == "truncate"
                else "fails them without sending (not counted; --on-long-text truncate cuts them)"
            )
        )
    if counter.stats.uncounted_texts:
        notes.append(
            f"{counter.stats.uncounted_texts} texts could not be counted "
            f"({counter.stats.uncounted_reason}); they are approximated from characters"
        )
    samples: dict[str, list[int]] | None = None
    sample_report: SampleReport | None = None
    calibration: Calibration | None = None
    if sampler is not None and sampler.items:
        with contextlib.ExitStack() as stack:
            out = request.out
            if out is None:
                out = Path(stack.enter_context(tempfile.TemporaryDirectory()))
                notes.append("sampled answers discarded: give --out DIR to keep them")
            samples, sample_report, calibration = anyio.run(
                _run_sample, request, settings, sampler, out
            )
            if request.out is None:
                sample_report = replace(sample_report, out=None)
        if calibration.messages and not calibration.matches:
            tally.recalibrate(calibration)
        if sample_report.failed:
            notes.append(f"{sample_report.failed} sampled jobs failed and are left out")
    estimate = build_estimate(
        tally,
        request.prices,
        source=str(request.jobs_path),
        exact_input=True,
        output_method=_output_method(tally, sample_report, request.confidence),
        samples=samples,
        confidence=request.confidence,
        notes=notes,
        sample_report=sample_report,
    )
    if balance.entries is not None:
        balance = check_balance(estimate, balance.entries)
    return replace(estimate, balance=balance, calibration=calibration)


@main.command()
@click.argument(
    "jobs_path", metavar="JOBS", type=click.Path(exists=True, allow_dash=True, path_type=Path)
)
@kind_options
@click.option(
    "--prices",
    "prices_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Price table JSON overriding the built-in one (rubles per 1M tokens per model).",
)
@click.option(
    "--sample",
    type=click.IntRange(min=1),
    help="Answer N random chat jobs for real to project output tokens with an interval.",
)
@click.option("--seed", type=int, help="Seed for choosing the sample (reproducible estimates).")
@click.option(
    "--confidence",
    type=click.FloatRange(0.5, 1.0, min_open=True, max_open=True),
    default=0.95,
    show_default=True,
    help="Confidence level of the output interval.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the sampled answers here, as a run checkpoint: `gigabatch run` with the "
    "same --out and settings does not pay for them again.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--offline",
    is_flag=True,
    help="No credentials, no requests: approximate input tokens from characters.",
)
@click.option("--emulator", is_flag=True, help="Estimate against a local emulator (b2b profile).")
@max_concurrency_option
@click.option(
    "--message-overhead",
    type=click.IntRange(min=0),
    default=MESSAGE_OVERHEAD,
    show_default=True,
    help="Tokens billed per chat message beyond its content (calibrate from one answer's "
    "prompt_tokens).",
)
@click.option("--skip-invalid", is_flag=True, help="Leave invalid lines out instead of stopping.")
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
@api_options
@cli_errors
def estimate(
    jobs_path: Path,
    prices_path: Path | None,
    sample: int | None,
    seed: int | None,
    confidence: float,
    out: Path | None,
    as_json: bool,
    offline: bool,
    emulator: bool,
    max_concurrency: int,
    message_overhead: int,
    skip_invalid: bool,
    quiet: bool,
    **options: Any,
) -> None:
    """Estimate tokens and cost of a job file (or `-`, standard input) before running it.

    Input tokens are counted exactly with the API's /tokens/count (many texts per call,
    through the same limiter and retries as `run`), plus the few tokens per message the API
    bills beyond the text. Output tokens are bounded by max_tokens; with --sample N, N random
    jobs are answered for real, the total is projected with a confidence interval, and the
    per-message overhead is checked against what their prompts were billed. The
    prepaid balance, where the account has one, is shown next to the estimate. --offline
    approximates from characters without credentials or requests.

    \b
    Examples:
      gigabatch estimate sample_jobs/chat.jsonl --emulator
      gigabatch estimate jobs.jsonl --sample 100 --out out/jobs --json
      gigabatch estimate texts.parquet --kind embed --offline
    """
    if offline and (sample or emulator):
        raise ConfigError("--offline sends no requests: it cannot take --sample or --emulator")
    if out is not None and not sample:
        raise ConfigError("--out keeps the answers of --sample N: give --sample too")
    api = {name: options.pop(name) for name in API_OPTION_NAMES}
    prices = PriceTable.load(prices_path)
    with contextlib.ExitStack() as stack:
        jobs_path = stack.enter_context(temporary_spool(jobs_path))
        settings = None
        if not offline:
            settings = stack.enter_context(api_settings(api, emulator, "b2b", ()))
            if not settings.has_auth:
                raise ConfigError(
                    "no credentials: set GIGACHAT_CREDENTIALS (or GIGACHAT_ACCESS_TOKEN, "
                    "GIGACHAT_USER and GIGACHAT_PASSWORD, or GIGACHAT_CERT_FILE), or use --offline"
                )
        # Offline there are no settings to read, but GIGACHAT_MODEL still names the model.
        model_default = (
            settings.model if settings is not None else os.environ.get("GIGACHAT_MODEL") or None
        )
        request = EstimateRequest(
            jobs_path=jobs_path,
            make_kind=lambda: build_kind(dict(options), model_default),
            prices=prices,
            sample=sample,
            seed=seed,
            confidence=confidence,
            out=out,
            max_concurrency=max_concurrency,
            message_overhead=message_overhead,
            skip_invalid=skip_invalid,
            quiet=quiet,
        )
        result = estimate_jobs(request, settings)
    if as_json:
        click.echo(orjson.dumps(estimate_to_json(result), option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(render_table(result))
    if result.balance is not None:
        for warning in result.balance.warnings:
            click.echo(f"warning: {warning}", err=True)
