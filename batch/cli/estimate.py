"""`gigabatch estimate`: tokens, cost and balance for a job file before it runs.

The options (batch/command_options.py) become an `EstimateRequest` for batch/estimator.py
(batch/launch.py); batch/estimate_report.py renders what it returns. It takes the run's
job-kind options and connection set-up, so its sample checkpoint is one `run` resumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import orjson

from batch.cli import main
from batch.cli.common import api_options, cli_errors, click_options, kind_options
from batch.command_options import ESTIMATE_OPTIONS
from batch.estimate_report import estimate_to_json, render_table
from batch.launch import estimate_from_options


@main.command()
@click.argument(
    "jobs_path", metavar="JOBS", type=click.Path(exists=True, allow_dash=True, path_type=Path)
)
@kind_options
@click_options(ESTIMATE_OPTIONS)
@api_options
@cli_errors
def estimate(jobs_path: Path, as_json: bool, **options: Any) -> None:
    """Estimate tokens and cost of a job file (or `-`, standard input) before running it.

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
    result = estimate_from_options(jobs_path, options)
    if as_json:
        click.echo(orjson.dumps(estimate_to_json(result), option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(render_table(result))
    if result.balance is not None:
        for warning in result.balance.warnings:
            click.echo(f"warning: {warning}", err=True)
