"""How close `gigabatch estimate` comes to what a run is then billed, on the emulator.

For each job file (the files in sample_jobs/ and a generated 10,000-job chat file):
  1. estimate input tokens exactly (/tokens/count), run the whole file, and compare with the
     prompt tokens the emulator billed, cached ones included (target: within +-2%), and the
     estimated cacheable prefix with the tokens the emulator served from its cache;
  2. estimate with --sample of 1% of the jobs (at least 10), checkpointed in the run's
     directory, run the rest there, and compare the expected cost with the actual cost
     (target: within +-10%);
  3. (the generated file) run with a budget of half the actual cost, then resume with a
     larger one: neither run may spend more than its budget.

    python -m bench.estimate_accuracy [--jobs 10000] [--json]   (from the repository root)
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import anyio
import orjson
import pyarrow.dataset as ds

from batch.api_types import Usage
from batch.emulator import RunningEmulator, profile, serve_emulator
from batch.estimator import EstimateRequest, estimate_jobs
from batch.pricing import PriceTable
from batch.run_config import RunConfig
from batch.runner import run_jobs
from batch.settings import ClientSettings
from bench.jobgen import write_chat_jobs
from jobs.registry import kind_for

ROOT = Path(__file__).resolve().parent.parent
Kind = Literal["chat", "embed"]
CONCURRENCY = 32


@dataclass
class Accuracy:
    name: str
    kind: str
    jobs: int
    estimated_input: int
    billed_input: int
    estimated_cacheable: int
    precached: int
    input_error_pct: float
    sample: int
    estimated_cost: float | None
    cost_low: float
    cost_high: float
    actual_cost: float
    cost_error_pct: float | None
    in_interval: bool


@dataclass
class BudgetCheck:
    budget_first: float
    spent_first: float
    status_first: str
    budget_second: float
    spent_total: float
    status_second: str


@contextmanager
def emulator() -> Iterator[RunningEmulator]:
    # Short latencies keep the benchmark quick; answer lengths spread widely (10-400 tokens)
    # so the sampling projection has real variance to cope with.
    config = profile(
        "b2b",
        stream_limit=CONCURRENCY,
        latency_base_ms=2.0,
        latency_per_prompt_token_ms=0.0,
        latency_per_completion_token_ms=0.01,
        answer_tokens_min=10,
        answer_tokens_max=400,
        seed=1,
    )
    with serve_emulator(config, subprocess=True) as emu:
        yield emu



def estimate(
    emu: RunningEmulator,
    path: Path,
    kind: Kind,
    prices: PriceTable,
    *,
    sample: int | None = None,
    out: Path | None = None,
    seed: int = 7,
) -> Any:
    request = EstimateRequest(
        jobs_path=path,
        make_kind=lambda: kind_for(kind),
        prices=prices,
        client_settings=ClientSettings.from_env(emu.client_env()),
        sample=sample,
        seed=seed,
        confidence=0.95,
        out=out,
        max_concurrency=CONCURRENCY,
        message_overhead=3,
        skip_invalid=False,
        quiet=True,
    )
    return estimate_jobs(request)


def run(
    emu: RunningEmulator,
    path: Path,
    kind: Kind,
    out: Path,
    prices: PriceTable,
    *,
    max_cost: float | None = None,
) -> str:
    config = RunConfig(
        jobs_path=path,
        out_dir=out,
        kind=kind_for(kind),
        client_settings=ClientSettings.from_env(emu.client_env()),
        max_concurrency=CONCURRENCY,
        prices=prices,
        max_cost=max_cost,
        progress="off",
        handle_signals=False,
    )
    return anyio.run(run_jobs, config).status


def results_cost(out: Path, prices: PriceTable, kind: Kind) -> float:
    """What the rows in results/ were billed (embeddings: the emulator's bill is per text
    sent, so duplicates are not in the rows' usage; chat rows carry their own usage)."""
    table = ds.dataset(out / "results").to_table()
    cost = 0.0
    models = table.column("model").to_pylist()
    prompt = table.column("prompt_tokens").to_pylist()
    completion = (
        table.column("completion_tokens").to_pylist() if kind == "chat" else [0] * table.num_rows
    )
    for model, p, c in zip(models, prompt, completion, strict=True):
        cost += prices.cost(model, Usage(p or 0, c or 0))
    return cost


def billed(emu: RunningEmulator, kind: Kind) -> tuple[int, int]:
    """Input tokens the emulator served (billed + served free from its prompt cache), and
    the cached part; the estimate predicts both."""
    tokens: dict[str, int] = emu.stats(arrivals=False)["tokens"]
    if kind == "embed":
        return tokens["embedding"], 0
    return tokens["prompt"] + tokens["precached"], tokens["precached"]


def pct(estimated: float, actual: float) -> float:
    return 100.0 * (estimated - actual) / actual if actual else 0.0


def measure(emu: RunningEmulator, name: str, path: Path, kind: Kind, work: Path) -> Accuracy:
    prices = PriceTable.load()
    exact = estimate(emu, path, kind, prices)
    emu.reset_stats()
    run(emu, path, kind, work / f"{name}-full", prices)
    billed_input, precached = billed(emu, kind)
    # The emulator bills embeddings per text sent; the run's own rows price what it paid.
    actual_full = (
        billed_input * prices.price_per_million(exact.models[0].model) / 1e6
        if kind == "embed"
        else results_cost(work / f"{name}-full", prices, kind)
    )
    # 1% of the jobs, but at least 10: a handful of answers projects nothing (sample_jobs/).
    sample = max(10, math.ceil(exact.rows / 100)) if kind == "chat" else 0
    if sample:
        out = work / f"{name}-sampled"
        sampled = estimate(emu, path, kind, prices, sample=sample, out=out)
        run(emu, path, kind, out, prices)  # resumes: the sample is already paid for
        actual = results_cost(out, prices, kind)
        cost = sampled.cost
    else:
        actual = actual_full
        cost = exact.cost
    expected = cost.expected
    return Accuracy(
        name=name,
        kind=kind,
        jobs=exact.rows,
        estimated_input=exact.input_tokens,
        billed_input=billed_input,
        estimated_cacheable=exact.cacheable_tokens,
        precached=precached,
        input_error_pct=pct(exact.input_tokens, billed_input),
        sample=sample,
        estimated_cost=expected,
        cost_low=cost.low,
        cost_high=cost.high,
        actual_cost=actual,
        cost_error_pct=None if expected is None else pct(expected, actual),
        in_interval=cost.low <= actual * (1 + 1e-9) and actual <= cost.high * (1 + 1e-9),
    )


def budget_check(emu: RunningEmulator, path: Path, work: Path, full_cost: float) -> BudgetCheck:
    prices = PriceTable.load()
    out = work / "budget"
    first = round(full_cost / 2, 4)
    status_first = run(emu, path, "chat", out, prices, max_cost=first)
    spent_first = results_cost(out, prices, "chat")
    second = round(full_cost * 1.2, 4)
    status_second = run(emu, path, "chat", out, prices, max_cost=second)
    return BudgetCheck(
        budget_first=first,
        spent_first=spent_first,
        status_first=status_first,
        budget_second=second,
        spent_total=results_cost(out, prices, "chat"),
        status_second=status_second,
    )


@dataclass
class SeedSpread:
    """The 1% sample's expected cost over several seeds, against the one true cost."""

    seeds: int
    sample: int
    mean_abs_error_pct: float
    max_abs_error_pct: float
    intervals_holding_truth: int


def seed_spread(
    emu: RunningEmulator, path: Path, work: Path, measured: Accuracy, seeds: int
) -> SeedSpread:
    prices = PriceTable.load()
    actual = measured.actual_cost
    sample = measured.sample
    errors: list[float] = []
    held = 0
    for seed in range(1, seeds + 1):
        result = estimate(
            emu, path, "chat", prices, sample=sample, out=work / f"seed-{seed}", seed=seed
        )
        cost = result.cost
        errors.append(abs(pct(cost.expected, actual)))
        held += cost.low <= actual <= cost.high
    return SeedSpread(seeds, sample, sum(errors) / len(errors), max(errors), held)


def sample_files() -> list[tuple[str, Path, Kind]]:
    found: list[tuple[str, Path, Kind]] = []
    for path in sorted((ROOT / "sample_jobs").glob("*")):
        if path.name.startswith((".", "_")) or path.suffix not in (".jsonl", ".parquet", ""):
            continue
        kind: Kind = "embed" if "emb" in path.name.lower() else "chat"
        found.append((path.name, path, kind))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--jobs", type=int, default=10_000, help="generated chat jobs")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument(
        "--seeds", type=int, default=5, help="sample seeds for the spread of the 1%% estimate"
    )
    args = parser.parse_args(argv)
    rows: list[Accuracy] = []
    with tempfile.TemporaryDirectory() as tmp, emulator() as emu:
        work = Path(tmp)
        generated = write_chat_jobs(work / "generated.jsonl", args.jobs, seed=11)
        files = [*sample_files(), (f"generated-{args.jobs}", generated, "chat")]
        for name, path, kind in files:
            rows.append(measure(emu, name, path, kind, work))
            print(f"measured {name}", file=sys.stderr)
        budget = budget_check(emu, generated, work, rows[-1].actual_cost)
        spread = seed_spread(emu, generated, work, rows[-1], args.seeds)
    if args.json:
        data = {
            "accuracy": [asdict(r) for r in rows],
            "budget": asdict(budget),
            "seed_spread": asdict(spread),
        }
        print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return 0
    print(
        f"{'file':<24} {'kind':<5} {'jobs':>6} {'est. input':>10} {'billed':>10} {'err%':>6}"
        f" {'est. cached':>11} {'cached':>7}"
        f" {'sample':>6} {'est. cost':>9} {'interval':>19} {'actual':>9} {'err%':>6} in"
    )
    for r in rows:
        expected = "-" if r.estimated_cost is None else f"{r.estimated_cost:.4f}"
        error = "-" if r.cost_error_pct is None else f"{r.cost_error_pct:+.2f}"
        interval = f"{r.cost_low:.4f}-{r.cost_high:.4f}"
        print(
            f"{r.name:<24} {r.kind:<5} {r.jobs:>6} {r.estimated_input:>10} {r.billed_input:>10}"
            f" {r.input_error_pct:>+6.2f} {r.estimated_cacheable:>11} {r.precached:>7}"
            f" {r.sample:>6} {expected:>9} {interval:>19}"
            f" {r.actual_cost:>9.4f} {error:>6} {'yes' if r.in_interval else 'NO'}"
        )
    b = budget
    print(
        f"budget: first run {b.status_first}, spent {b.spent_first:.4f} of {b.budget_first:.4f}"
        f" RUB; resumed with {b.budget_second:.4f}: {b.status_second}, spent"
        f" {b.spent_total:.4f} in total"
    )
    print(
        f"1% sample over {spread.seeds} seeds ({spread.sample} jobs each): expected cost off by"
        f" {spread.mean_abs_error_pct:.2f}% on average, {spread.max_abs_error_pct:.2f}% at most;"
        f" interval held the actual cost {spread.intervals_holding_truth}/{spread.seeds} times"
    )
    ok = b.spent_first <= b.budget_first and b.spent_total <= b.budget_second
    print(f"never over budget: {'yes' if ok else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
