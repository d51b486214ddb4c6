"""The estimate of a job file before it runs: validate, count, sample, price, check balance.

Input tokens come from `/tokens/count` (exact) or from characters (no client settings);
output tokens from the jobs' output bounds, or from a random sample of jobs answered for
real through the run engine (`sample`), checkpointed in `out` so the run does not pay for
them twice. The arithmetic is in batch/estimate_math.py, the counting pass in batch/counting.py;
this module drives them, and is what `gigabatch estimate` calls.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import anyio
import anyio.to_thread
import pyarrow.parquet as pq

from batch.api_types import Usage
from batch.cache import resolve_cache_dir
from batch.client import GigaChatClient
from batch.counting import (
    InputCounter,
    count_jobs,
    count_offline,
    limited_counter,
    measure_overhead,
)
from batch.errors import ApiError, PermissionDenied
from batch.estimate_math import (
    BalanceReport,
    Calibration,
    Estimate,
    SampleReport,
    Tally,
    build_estimate,
    check_balance,
)
from batch.layout import FAILED, RESULTS
from batch.limiter import AdaptiveLimiter
from batch.preparing import keep_spec
from batch.pricing import PriceTable
from batch.progress import log_time
from batch.projection import Reservoir
from batch.retry import RetryPolicy
from batch.reuse import AnswerReuse, CachedJobs
from batch.run_config import RunConfig
from batch.run_lock import RunLock
from batch.runner import run_jobs
from batch.settings import ClientSettings
from jobs.base import Job, JobKind
from jobs.readers import read_jobs, validate_jobs


@dataclass(frozen=True)
class EstimateRequest:
    """What one estimate is asked to do. `make_kind` builds the job kind with the run's
    settings (afresh for the sample run, as `run` would). Without `client_settings` nothing
    is sent: input tokens are approximated from characters, and there is no sample.
    `message_overhead` replaces the kind's assumed per-message overhead."""

    jobs_path: Path
    make_kind: Callable[[], JobKind]
    prices: PriceTable
    client_settings: ClientSettings | None = None
    sample: int | None = None
    seed: int | None = None
    confidence: float = 0.95
    out: Path | None = None
    max_concurrency: int = 16
    message_overhead: int | None = None
    skip_invalid: bool = False
    quiet: bool = True
    keep_columns: tuple[str, ...] = ()
    # The answer cache, as `run` would use it (None: the kind's default; the directory's
    # default is GIGABATCH_CACHE_DIR, else the user cache directory).
    cache: bool | None = None
    cache_dir: Path | None = None


class _ProgressLine:
    """The counting pass's progress on stderr: a live line on a terminal, a line every few
    seconds otherwise, nothing when quiet."""

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
            sys.stderr.write(f"{log_time()} {line}\n")
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
    limiter = AdaptiveLimiter(request.max_concurrency)
    check = limiter.cooldown.check_send
    async with GigaChatClient(
        settings, max_connections=request.max_concurrency, send_check=check
    ) as client:
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
    kind = request.make_kind()
    config = RunConfig(
        jobs_path=request.jobs_path,
        out_dir=out,
        kind=kind,
        client_settings=settings,
        max_concurrency=request.max_concurrency,
        prices=request.prices,
        skip_invalid=request.skip_invalid,
        job_filter=lambda job: job.id in wanted,
        keep_columns=request.keep_columns,
        progress="off" if request.quiet else "auto",
        handle_signals=False,
        locked_by_caller=request.out is not None,  # estimate_jobs holds it
    )
    summary = await run_jobs(config)
    if summary.status == "fatal":
        raise ApiError(f"the sample run stopped: {summary.message}")
    found = await anyio.to_thread.run_sync(_read_sampled, out, wanted, request.prices)
    answered = [(job, found.prompt[job.id]) for job, _ in sampler.items if job.id in found.prompt]
    assumed = kind.billed_input(sampler.items[0][0], message_overhead=request.message_overhead)
    limiter = AdaptiveLimiter(4)
    check = limiter.cooldown.check_send
    async with GigaChatClient(settings, max_connections=4, send_check=check) as client:
        count = limited_counter(client.tokens_count, limiter, RetryPolicy())
        calibration = await measure_overhead(
            kind, answered, count, assumed=assumed.overhead // max(assumed.messages, 1)
        )
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


def _output_method(
    kind: JobKind, tally: Tally, report: SampleReport | None, confidence: float
) -> str:
    if not kind.has_output:
        return f"{kind.name} jobs have no output tokens"
    if report is not None:
        return (
            f"projected from {report.answered} randomly sampled jobs answered for real "
            f"({confidence:.0%} Student-t interval with finite-population correction)"
        )
    defaulted = sum(m.rows_default_bound for m in tally.models.values())
    note = kind.output_bound_note(defaulted) if defaulted else ""
    return (
        f"between 0 and the max_tokens bound{'; ' + note if note else ''}; "
        "use --sample N for an expected value"
    )


def _sample_and_calibrate(
    request: EstimateRequest,
    settings: ClientSettings,
    sampler: Reservoir[tuple[Job, str]],
    tally: Tally,
    notes: list[str],
) -> tuple[dict[str, list[int]], SampleReport, Calibration]:
    """Run the sample (into a temporary directory without `out`), correct the tally's
    per-message overhead by what the sample was billed, and note what happened."""
    with contextlib.ExitStack() as stack:
        out = request.out
        if out is None:
            out = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            notes.append("sampled answers discarded: give --out DIR to keep them")
        samples, report, calibration = anyio.run(_run_sample, request, settings, sampler, out)
        if request.out is None:
            report = replace(report, out=None)
    if calibration.messages and not calibration.matches:
        tally.recalibrate(calibration)
    if report.failed:
        notes.append(f"{report.failed} sampled jobs failed and are left out")
    return samples, report, calibration


def _counting_notes(kind: JobKind, counter: InputCounter) -> list[str]:
    notes = []
    if counter.stats.over_limit:
        notes.append(kind.over_limit_note(counter.stats.over_limit))
    if counter.stats.uncounted_texts:
        notes.append(
            f"{counter.stats.uncounted_texts} texts could not be counted "
            f"({counter.stats.uncounted_reason}); they are approximated from characters"
        )
    return notes


def estimate_jobs(request: EstimateRequest) -> Estimate:
    """Validate, count, sample and price a job file, then check the prepaid balance. A
    sample into `out` holds that directory's run lock from the start (OutputLocked, before
    anything is counted, when a run holds it)."""
    if request.sample and request.out is not None:
        lock = RunLock.acquire(request.out, "estimate --sample")
        try:
            return _estimate_file(request)
        finally:
            lock.release()
    return _estimate_file(request)


def _estimate_file(request: EstimateRequest) -> Estimate:
    kind = request.make_kind()
    report = validate_jobs(request.jobs_path, kind, keep=keep_spec(kind, request.keep_columns))
    if not request.skip_invalid:
        report.raise_for_problems()
    jobs: Iterator[Job] = read_jobs(
        request.jobs_path,
        kind,
        skip_invalid=request.skip_invalid,
        exclude=report.duplicates,
        keep=report.kept,
    )
    with _cache_sieve(request, kind) as cached:
        if cached is not None:
            jobs = cached.misses(jobs)
        estimate = _estimate(request, kind, report.jobs, jobs)
    if cached is None or not cached.answered:
        return estimate
    note = (
        f"{cached.answered:,} of {report.jobs:,} jobs are answered in the answer cache: "
        "a run writes them without a request, so only the other "
        f"{report.jobs - cached.answered:,} are priced"
    )
    return replace(estimate, notes=[*estimate.notes, note], cached_rows=cached.answered)


@contextlib.contextmanager
def _cache_sieve(request: EstimateRequest, kind: JobKind) -> Iterator[CachedJobs | None]:
    """The answer cache a run with these settings would read, or None when it reads none."""
    use = request.cache if request.cache is not None else kind.cached_by_default
    if not use or not kind.keeps_answers:
        yield None
        return
    directory = resolve_cache_dir(request.cache_dir, os.environ)
    answers = AnswerReuse.open(kind, directory, cache_dir=directory)
    try:
        yield CachedJobs(answers)
    finally:
        answers.close(finished=False)


def _estimate(request: EstimateRequest, kind: JobKind, total: int, jobs: Iterator[Job]) -> Estimate:
    """Count, sample and price `jobs` (the job file's, less those the cache answers)."""
    tally = Tally(kind.name, kind.has_output)
    sampler: Reservoir[tuple[Job, str]] | None = (
        Reservoir(request.sample, request.seed) if request.sample and kind.has_output else None
    )
    counter = InputCounter(kind, tally, message_overhead=request.message_overhead, sampler=sampler)
    input_note = kind.input_note(request.message_overhead)
    notes = [input_note] if input_note else []
    if request.sample and not kind.has_output:
        notes.append(f"--sample ignored: {kind.name} jobs have no output tokens to project")
    settings = request.client_settings
    if settings is None:
        count_offline(jobs, counter)
        return build_estimate(
            tally,
            request.prices,
            source=str(request.jobs_path),
            exact_input=False,
            output_method=_output_method(kind, tally, None, request.confidence),
            notes=notes,
        )
    balance = anyio.run(_count_online, request, settings, jobs, counter, total)
    notes.extend(_counting_notes(kind, counter))
    samples: dict[str, list[int]] | None = None
    sample_report: SampleReport | None = None
    calibration: Calibration | None = None
    if sampler is not None and sampler.items:
        samples, sample_report, calibration = _sample_and_calibrate(
            request, settings, sampler, tally, notes
        )
    estimate = build_estimate(
        tally,
        request.prices,
        source=str(request.jobs_path),
        exact_input=True,
        output_method=_output_method(kind, tally, sample_report, request.confidence),
        samples=samples,
        confidence=request.confidence,
        notes=notes,
        sample_report=sample_report,
    )
    if balance.entries is not None:
        balance = check_balance(estimate, balance.entries, kind.balance_usage)
    return replace(estimate, balance=balance, calibration=calibration)
