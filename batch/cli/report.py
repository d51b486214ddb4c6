"""`gigabatch report DIR`: write DIR/report.html, the run's plots in one offline page."""

from __future__ import annotations

from pathlib import Path

import click

from batch.cli import main
from batch.cli.common import OutputLocation, cli_errors
from batch.report import write_report, write_uri_report


@main.command()
@click.argument("out_dir", metavar="DIR", type=OutputLocation())
@cli_errors
def report(out_dir: Path | str) -> None:
    """Write DIR/report.html: what the run in DIR did, as one self-contained page. DIR may
    be an output URI (s3://bucket/run): the page is written there.

    Summary figures at the top, then throughput, requests in flight against the limiter's
    level (429s and Retry-After pauses marked), latency percentiles, tokens and spend
    against the budget, failures by class; every resume leg is marked. The page needs no
    network: the plotting library is inside it.

    \b
    Example:
      gigabatch run sample_jobs/chat.jsonl --out out/chat --emulator
      gigabatch report out/chat        # then open out/chat/report.html
    """
    if isinstance(out_dir, str):
        click.echo(write_uri_report(out_dir))
        return
    click.echo(str(write_report(out_dir)))
