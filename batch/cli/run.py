"""`gigabatch run`, `gigabatch validate` and `gigabatch status`: the main job, its dry check,
and a look at an output directory. Options become a RunConfig; the engine does the rest."""

from __future__ import annotations

import gc
import shlex
import sys
from pathlib import Path
from typing import Any

import anyio
import click
import orjson

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
from batch.cli.batches import batches_lines, batches_options, batches_status
from batch.cli.common import (
    OutputLocation,
    api_options,
    build_kind,
    cli_errors,
    click_options,
    keep_columns_option,
    kind_options,
)
from batch.command_options import RUN_OPTIONS
from batch.failures import failure_classes
from batch.launch import execute_run, planned_run
from batch.output_uri import is_uri, shown_uri
from batch.part_store import output_for_reading
from batch.preparing import keep_spec
from batch.pricing import PriceTable
from batch.progress import ProgressMode
from jobs.readers import validate_jobs
from jobs.sources import temporary_spool

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
    type=OutputLocation(),
    help="Output directory (created; resumed when it holds a run of the same input), or a "
    "filesystem URI: s3://bucket/prefix, gs://..., hdfs://..., file:///... (see --state-dir).",
)
@kind_options
@click_options(RUN_OPTIONS)
@batches_options
@api_options
@cli_errors
def run(jobs: Path, out_dir: Path | str, quiet: bool, **options: Any) -> None:
    """Answer every job of JOBS into --out: JSONL (also .gz, .zst), Parquet, a directory of
    them, or `-` for standard input (spooled into --out/input/, which a resume reuses).

    Resumable: run the same command again after a crash, Ctrl-C or a budget stop and only
    the jobs not yet answered are sent. Exit codes: 0 all succeeded, 3 some rows failed,
    1 fatal error (the API, the disk, a Retry-After over --max-retry-after), 2 usage or
    invalid input, 4 budget reached, 5 another run holds --out (nothing sent or changed),
    130/143 interrupted.

    One run at a time per --out: a second one exits 5 at once, naming the process that
    holds the directory. A full disk stops sending; the answered rows are kept and
    committed as soon as there is room (for --disk-wait seconds).

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
      gigabatch run corpus.parquet --out out/c --keep-columns lang,source --emulator
      gigabatch run texts.parquet --kind embed --text-column body --out out/emb \\
          --max-concurrency 32 --max-cost 50
      gigabatch run texts.parquet --kind embed --out out/$(date +%F) \\
          --changed-since out/yesterday
      gigabatch run texts.parquet --kind embed --out out/emb --ray auto --max-concurrency 64
      gigabatch run texts.parquet --kind embed --out s3://bucket/emb --ray auto
    """
    progress: ProgressMode = "off" if quiet else "auto"
    given = jobs
    with planned_run(jobs, out_dir, options, progress=progress) as plan:
        jobs = plan.config.jobs_path
        # Everything alive now (modules, settings, the job kind) lives as long as the run:
        # kept out of the collector's scans, a full collection stalls every request in
        # flight for ~17 ms instead of ~50 ms.
        gc.freeze()
        summary = anyio.run(execute_run, plan)
    if not quiet:
        summary.print(sys.stderr, retry_command(sys.argv[1:], given, jobs))
    elif summary.status != "completed":
        click.echo(f"{summary.status}: {summary.message}", err=True)
    sys.exit(EXIT_CODES[summary.status])


def retry_command(args: list[str], given: Path, jobs: Path) -> str:
    """The command line that re-drives this run's failed rows: the same arguments with
    --retry-failed (never --restart, which would delete the answers), reading a spooled
    standard input from its spool. Secrets given as options, or in an --out URI, are not
    repeated."""
    kept: list[str] = []
    skip_value = False
    for arg in args:
        if skip_value:
            skip_value = False
            continue
        name = arg.split("=", 1)[0]
        if name in _SECRET_OPTIONS:
            skip_value = "=" not in arg
            continue
        if is_uri(arg):
            kept.append(shown_uri(arg))
        elif arg not in ("--restart", "--retry-failed"):
            kept.append(str(jobs) if arg == str(given) and given != jobs else arg)
    return shlex.join(["gigabatch", *kept, "--retry-failed"])


# Options whose values are secrets: a printed command leaves them to the environment.
_SECRET_OPTIONS = frozenset(
    {"--credentials", "--password", "--access-token", "--key-file-password"}
)


@main.command()
@click.argument("jobs", type=click.Path(exists=True, allow_dash=True, path_type=Path))
@kind_options
@keep_columns_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@cli_errors
def validate(jobs: Path, as_json: bool, keep_columns: tuple[str, ...], **options: Any) -> None:
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
        report = validate_jobs(
            readable, kind, max_problems=10_000, keep=keep_spec(kind, keep_columns)
        )
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
@click.argument("out_dir", metavar="OUT", type=OutputLocation(exists=True))
@click.option(
    "--prices",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Price table JSON for the cost (default: the built-in one).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@cli_errors
def status(out_dir: Path | str, prices: Path | None, as_json: bool) -> None:
    """Show a run's progress from its output (a directory or an output URI): done, failed,
    remaining, tokens, cost.

    \b
    Example:
      gigabatch status out/chat
      gigabatch status s3://bucket/emb
    """
    store, state_dir = output_for_reading(out_dir)
    manifest, totals = read_status(store)
    batches = batches_status(state_dir)
    table = PriceTable.load(prices)
    if batches:  # the batch API bills at the table's batch prices, as the run priced it
        table = table.for_batches()
    total_jobs = int(manifest.get("total_jobs", 0))
    tokens = totals.tokens
    data = {
        "out": store.where(),
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
    failures = failure_classes(store)
    data["failures"] = {f.error_class: f.to_json() for f in failures}
    if batches:
        data["batches"] = batches
    if as_json:
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return
    click.echo(
        f"{data['out']} ({data['kind']} jobs from {data['input']}, updated {data['updated_at']})\n"
        f"  done: {totals.succeeded + totals.failed} of {total_jobs} "
        f"({totals.succeeded} succeeded, {totals.failed} failed), {data['remaining']} remaining\n"
        f"  tokens: {tokens.prompt_tokens} prompt, {tokens.completion_tokens} completion, "
        f"{tokens.precached_prompt_tokens} precached\n"
        f"  cost: {data['cost']:.4f} {table.currency}"
    )
    for f in failures:
        example = f"e.g. id {f.example_id!r}: {f.example_message}"
        example = f"e.g. id {f.example_id!r}: {f.example_message}"
        click.echo(f"  failed {f.error_class}: {f.count}, {example}")
    if batches:
        click.echo(batches_lines(batches))
