"""`gigabatch estimate`: tokens, cost and balance for a job file before it runs.

The options become an `EstimateRequest` for batch/estimator.py; batch/estimate_report.py
renders what it returns. It takes the run's job-kind options and connection set-up, so its
sample checkpoint is one `run` resumes.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import click
import orjson

from batch.cli import main
from batch.cli.cache_options import answer_cache_options
from batch.cli.common import (
    API_OPTION_NAMES,
    api_options,
    api_settings,
    build_kind,
    cli_errors,
    kind_options,
    max_concurrency_option,
)
from batch.errors import ConfigError
from batch.estimate_report import estimate_to_json, render_table
from batch.estimator import EstimateRequest, estimate_jobs
from batch.pricing import PriceTable
from batch.settings import ClientSettings


def _online_settings(
    stack: contextlib.ExitStack, api: dict[str, Any], emulator: bool
) -> ClientSettings:
    """The client settings (of an emulator kept running in `stack` with --emulator);
    ConfigError without credentials."""
    settings = stack.enter_context(api_settings(api, emulator, "b2b", ()))
    if not settings.has_auth:
        raise ConfigError(
            "no credentials: set GIGACHAT_CREDENTIALS (or GIGACHAT_ACCESS_TOKEN, "
            "GIGACHAT_USER and GIGACHAT_PASSWORD, or GIGACHAT_CERT_FILE), or use --offline"
        )
    return settings


@main.command()
@click.argument("jobs_path", metavar="JOBS", type=click.Path(exists=True, path_type=Path))
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
    default=None,
    help="Tokens billed per chat message beyond its content (default: the kind's measured "
    "3; calibrate from one answer's prompt_tokens).",
)
@click.option("--skip-invalid", is_flag=True, help="Leave invalid lines out instead of stopping.")
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
@answer_cache_options
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
    message_overhead: int | None,
    skip_invalid: bool,
    quiet: bool,
    cache: bool | None,
    cache_dir: Path | None,
    **options: Any,
) -> None:
    """Estimate tokens and cost of a job file before running it.

    Input tokens are counted exactly with the API's /tokens/count (many texts per call,
    through the same limiter and retries as `run`), plus the few tokens per message the API
    bills beyond the text. Output tokens are bounded by max_tokens; with --sample N, N random
    jobs are answered for real, the total is projected with a confidence interval, and the
    per-message overhead is checked against what their prompts were billed. The
    prepaid balance, where the account has one, is shown next to the estimate. --offline
    approximates from characters without credentials or requests. Jobs the answer cache
    answers already (embeddings by default, chat with --cache) are counted, not priced.

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
        settings = None if offline else _online_settings(stack, api, emulator)
        # Offline there are no settings to read, but GIGACHAT_MODEL still names the model.
        model_default = (
            settings.model if settings is not None else os.environ.get("GIGACHAT_MODEL") or None
        )
        request = EstimateRequest(
            jobs_path=jobs_path,
            make_kind=lambda: build_kind(dict(options), model_default),
            prices=prices,
            client_settings=settings,
            sample=sample,
            seed=seed,
            confidence=confidence,
            out=out,
            max_concurrency=max_concurrency,
            message_overhead=message_overhead,
            skip_invalid=skip_invalid,
            quiet=quiet,
            cache=cache,
            cache_dir=cache_dir,
        )
        result = estimate_jobs(request)
    if as_json:
        click.echo(orjson.dumps(estimate_to_json(result), option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(render_table(result))
    if result.balance is not None:
        for warning in result.balance.warnings:
            click.echo(f"warning: {warning}", err=True)
