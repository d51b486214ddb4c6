"""`gigabatch run`, `gigabatch validate` and `gigabatch status`: the main job, its dry check,
and a look at an output directory. Options become a RunConfig; the engine does the rest."""

from __future__ import annotations

import gc
import sys
from pathlib import Path
from typing import Any

import anyio
import click
import orjson

from batch.batch_journal import prepare_online_run
from batch.batches_mode import run_batches
from batch.checkpoint import read_status
from batch.cli import (
    EXIT_BUDGET,
    EXIT_FAILED_ROWS,
    EXIT_FATAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_USAGE,
    main,
)
from batch.cli.batches import batches_lines, batches_options, batches_status, pop_batches_options
from batch.cli.cluster import pop_ray_options, ray_options
from batch.cli.common import (
    api_options,
    api_settings,
    build_kind,
    cli_errors,
    kind_options,
    max_concurrency_option,
)
from batch.pricing import PriceTable
from batch.retry import RetryPolicy
from batch.runner import RunConfig, run_jobs
from jobs.readers import validate_jobs
from jobs.sources import SPOOL_DIR, spooled_input, temporary_spool

EXIT_CODES = {
    "completed": EXIT_OK,
    "failed_rows": EXIT_FAILED_ROWS,
    "fatal": EXIT_FATAL,
    "budget": EXIT_BUDGET,
    "interrupted": EXIT_INTERRUPTED,
    "terminated": EXIT_TERMINATED,
    "timeout": EXIT_FATAL,
}


@main.command()
@click.argument("jobs", type=click.Path(exists=True, allow_dash=True, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output directory (created; resumed when it holds a run of the same input).",
)
@kind_options
@max_concurrency_option
@click.option(
    "--max-attempts",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Sends per request for 5xx, resets and timeouts (429s wait instead and don't count).",
)
@click.option(
    "--max-elapsed",
    type=click.FloatRange(min=0, min_open=True),
    default=300.0,
    show_default=True,
    help="Seconds after which a request's retries (429s included) give up.",
)
@click.option(
    "--flush-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=2.0,
    show_default=True,
    help="Seconds between committed parts: the most answered work a crash can lose.",
)
@click.option(
    "--grace-period",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="On Ctrl-C/SIGTERM/fatal errors, seconds to let requests in flight finish.",
)
@click.option(
    "--skip-invalid", is_flag=True, help="Run the valid jobs, list the rest in invalid.jsonl."
)
@click.option("--restart", is_flag=True, help="Delete the output directory's previous run first.")
@click.option("--retry-failed", is_flag=True, help="Send the jobs in failed/ again.")
@click.option(
    "--prices",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Price table JSON (default: the built-in one).",
)
@click.option("--max-cost", type=click.FloatRange(min=0), default=None, help="Budget in RUB.")
@click.option(
    "--max-tokens",
    "max_tokens_budget",
    type=click.IntRange(min=0),
    default=None,
    help="Budget in billed tokens (not the answers' length: see --max-completion-tokens).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress and no summary (errors still show).")
@click.option("--emulator", is_flag=True, help="Run against a local emulator started in-process.")
@click.option(
    "--emulator-profile",
    default="b2b",
    show_default=True,
    help="Emulator profile for --emulator: pers, b2b, corp, storm, flaky, fast.",
)
@click.option(
    "--emulator-option",
    "emulator_knobs",
    multiple=True,
    metavar="KEY=VALUE",
    help="An emulator knob for --emulator (e.g. stream_limit=4); repeatable.",
)
@batches_options
@ray_options
@api_options
@cli_errors
def run(
    jobs: Path,
    out_dir: Path,
    max_concurrency: int,
    max_attempts: int,
    max_elapsed: float,
    flush_interval: float,
    grace_period: float,
    skip_invalid: bool,
    restart: bool,
    retry_failed: bool,
    prices: Path | None,
    max_cost: float | None,
    max_tokens_budget: int | None,
    quiet: bool,
    emulator: bool,
    emulator_profile: str,
    emulator_knobs: tuple[str, ...],
    **options: Any,
) -> None:
    """Answer every job of JOBS into --out: JSONL (also .gz, .zst), Parquet, a directory of
    them, or `-` for standard input (spooled into --out/input/, which a resume reuses).

    Resumable: run the same command again after a crash, Ctrl-C or a budget stop and only
    the jobs not yet answered are sent. Exit codes: 0 all succeeded, 3 some rows failed,
    1 fatal error, 2 usage or invalid input, 4 budget reached, 130/143 interrupted.

    A budget (--max-cost, --max-tokens) is never crossed: a request is sent only when its
    worst case still fits, so with a budget every chat request carries max_tokens (the
    job's own, else --max-completion-tokens, else 1024) and a longer answer stops there
    with finish_reason "length". That cap is one of the output's settings: resume a
    budgeted run with any budget, higher or not; without a budget, give
    --max-completion-tokens with the same cap (1024 by default), or the resume is refused.

    \b
    Examples:
      gigabatch run sample_jobs/chat.jsonl --out out/chat --emulator
      cat jobs.jsonl | gigabatch run - --out out/chat --emulator
      gigabatch run texts.parquet --kind embed --text-column body --out out/emb \\
          --max-concurrency 32 --max-cost 50
      gigabatch run texts.parquet --kind embed --out out/emb --ray auto --max-concurrency 64
    """
    mode, batch_settings = pop_batches_options(options)
    ray_address, ray_workers = pop_ray_options(options, mode)
    price_table = PriceTable.load(prices)
    jobs = spooled_input(jobs, out_dir / SPOOL_DIR)
    with api_settings(options, emulator, emulator_profile, emulator_knobs) as settings:
        kind = build_kind(options, settings.model)
        config = RunConfig(
            jobs_path=jobs,
            out_dir=out_dir,
            kind=kind,
            client_settings=settings,
            max_concurrency=max_concurrency,
            retry=RetryPolicy(max_attempts=max_attempts, max_elapsed=max_elapsed),
            flush_interval=flush_interval,
            grace_period=grace_period,
            skip_invalid=skip_invalid,
            restart=restart,
            retry_failed=retry_failed,
            prices=price_table,
            max_cost=max_cost,
            max_tokens=max_tokens_budget,
            progress="off" if quiet else "auto",
            ray=ray_address,
            ray_workers=ray_workers,
        )
        # Everything alive now (modules, settings, the job kind) lives as long as the run:
        # kept out of the collector's scans, a full collection stalls every request in
        # flight for ~17 ms instead of ~50 ms.
        gc.freeze()
        if mode == "batches":
            summary = anyio.run(run_batches, config, batch_settings)
        else:
            prepare_online_run(out_dir, restart=restart)
            summary = anyio.run(run_jobs, config)
    if not quiet:
        summary.print(sys.stderr)
    elif summary.status != "completed":
        click.echo(f"{summary.status}: {summary.message}", err=True)
    sys.exit(EXIT_CODES[summary.status])


@main.command()
@click.argument("jobs", type=click.Path(exists=True, allow_dash=True, path_type=Path))
@kind_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@cli_errors
def validate(jobs: Path, as_json: bool, **options: Any) -> None:
    """Check JOBS (a file, a directory, or `-` for standard input) without sending anything:
    every problem with its file, line or row, and field. Exit 0 when valid, 2 when not.

    \b
    Example:
      gigabatch validate sample_jobs/chat.jsonl
      zcat jobs.jsonl.gz | gigabatch validate -
      gigabatch validate texts.parquet --kind embed --text-column body
    """
    kind = build_kind(options)
    with temporary_spool(jobs) as readable:
        report = validate_jobs(readable, kind, max_problems=10_000)
    if as_json:
        click.echo(
            orjson.dumps(
                {
                    "path": str(jobs),
                    "records": report.records,
                    "jobs": report.jobs,
                    "fingerprint": report.fingerprint,
                    "problem_count": report.problem_count,
                    "problems": [
                        {
                            "file": p.location.file,
                            p.location.unit: p.location.number,
                            "field": p.field,
                            "message": p.message,
                        }
                        for p in report.problems
                    ],
                },
                option=orjson.OPT_INDENT_2,
            ).decode()
        )
    else:
        for problem in report.problems:
            click.echo(str(problem))
        if report.problem_count > len(report.problems):
            click.echo(f"... and {report.problem_count - len(report.problems)} more problems")
        verdict = "valid" if report.ok else f"INVALID: {report.problem_count} problem(s)"
        click.echo(f"{jobs}: {report.records} records, {report.jobs} jobs, {verdict}")
    sys.exit(EXIT_OK if report.ok else EXIT_USAGE)


@main.command()
@click.argument("out_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--prices",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Price table JSON for the cost (default: the built-in one).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@cli_errors
def status(out_dir: Path, prices: Path | None, as_json: bool) -> None:
    """Show a run's progress from its output directory: done, failed, remaining, tokens, cost.

    \b
    Example:
      gigabatch status out/chat
    """
    manifest, totals = read_status(out_dir)
    table = PriceTable.load(prices)
    total_jobs = int(manifest.get("total_jobs", 0))
    tokens = totals.tokens
    data = {
        "out": str(out_dir),
        "kind": manifest.get("kind"),
        "input": manifest.get("input", {}).get("path"),
        "total": total_jobs,
        "succeeded": totals.succeeded,
        "failed": totals.failed,
        "remaining": max(0, total_jobs - totals.succeeded - totals.failed),
        "tokens": {
            "prompt": tokens.prompt_tokens,
            "completion": tokens.completion_tokens,
            "precached": tokens.precached_prompt_tokens,
            "total": tokens.total_tokens,
        },
        "cost": round(totals.cost(table), 6),
        "currency": table.currency,
        "updated_at": manifest.get("updated_at"),
    }
    batches = batches_status(out_dir)
    if batches:
        data["batches"] = batches
    if as_json:
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return
    click.echo(
        f"{out_dir} ({data['kind']} jobs from {data['input']}, updated {data['updated_at']})\n"
        f"  done: {totals.succeeded + totals.failed} of {total_jobs} "
        f"({totals.succeeded} succeeded, {totals.failed} failed), {data['remaining']} remaining\n"
        f"  tokens: {tokens.prompt_tokens} prompt, {tokens.completion_tokens} completion, "
        f"{tokens.precached_prompt_tokens} precached\n"
        f"  cost: {data['cost']:.4f} {table.currency}"
    )
    if batches:
        click.echo(batches_lines(batches))
