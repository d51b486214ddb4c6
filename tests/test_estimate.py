"""The estimate's arithmetic: packing, the sampling projection, pricing, balance, output."""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import replace

import orjson
import pytest

from batch.api_types import BalanceEntry
from batch.estimate_math import (
    BalanceReport,
    Calibration,
    SampleReport,
    Tally,
    approximate_tokens,
    build_estimate,
    check_balance,
)
from batch.estimate_report import estimate_to_json, render_table
from batch.pricing import PriceTable
from batch.projection import Reservoir, Span, project_total, t_quantile
from jobs.registry import kind_for

CHAT_USAGE = kind_for("chat").balance_usage
EMBED_USAGE = kind_for("embed").balance_usage

PRICES = PriceTable(
    chat={"GigaChat": 200.0, "GigaChat-Max": 1950.0},
    embeddings={"Embeddings": 40.0},
    default_chat=1950.0,
    default_embeddings=40.0,
    taken="2025-06-01",
    source="test table",
)


def chat_tally(rows: int = 100, input_tokens: int = 10_000, bound: int = 512) -> Tally:
    tally = Tally("chat")
    for _ in range(rows):
        tally.add_row("GigaChat", output_bound=bound)
    tally.add_input("GigaChat", input_tokens)
    return tally


def test_approximate_tokens_rounds_characters_up() -> None:
    assert approximate_tokens("a" * 7) == 2
    assert approximate_tokens("a" * 8) == 3
    assert approximate_tokens("") == 0


@pytest.mark.parametrize(
    ("df", "table"),
    [
        (1, 12.7062),
        (2, 4.3027),
        (3, 3.1824),
        (5, 2.5706),
        (10, 2.2281),
        (30, 2.0423),
        (100, 1.9840),
    ],
)
def test_t_quantile_matches_the_table_at_95_percent(df: int, table: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(table, abs=0.0005)


def test_projection_of_a_full_census_is_exact() -> None:
    assert project_total([3, 5, 7], 3) == Span(15, 15, 15)


def test_projection_is_population_times_sample_mean() -> None:
    span = project_total([10, 20, 30], 300)
    assert span.expected == pytest.approx(6000)
    assert span.low < 6000 < span.high


def test_finite_population_correction_narrows_the_interval() -> None:
    sample = [10, 20, 30, 40, 50]
    huge = project_total(sample, 10**9)
    small = project_total(sample, 10)
    huge_width = (huge.high - huge.low) / 10**9
    small_width = (small.high - small.low) / 10
    assert small_width == pytest.approx(huge_width * math.sqrt(1 - 5 / 10), rel=1e-6)


def test_projection_never_goes_below_what_the_sample_already_used() -> None:
    span = project_total([0, 0, 0, 1000], 5)
    assert span.low >= 1000


def test_projection_is_clipped_to_the_max_tokens_bound() -> None:
    span = project_total([100, 900, 100, 900], 40, bound=20_000)
    assert span.high == 20_000


def test_projection_interval_covers_the_true_total_about_95_percent_of_the_time() -> None:
    rng = random.Random(1)
    population = [rng.randint(20, 400) for _ in range(2000)]
    truth = sum(population)
    covered = 0
    trials = 400
    for _ in range(trials):
        span = project_total(rng.sample(population, 40), len(population))
        covered += span.low <= truth <= span.high
    assert 0.91 <= covered / trials <= 0.99


def test_projection_interval_is_the_t_interval_with_population_correction() -> None:
    sample = [120, 80, 100, 140, 60]
    span = project_total(sample, 1000, confidence=0.9)
    margin = t_quantile(0.95, 4) * 1000 * statistics.stdev(sample) / math.sqrt(5)
    margin *= math.sqrt(1 - 5 / 1000)
    assert span.high - span.expected == pytest.approx(margin)  # type: ignore[operator]


def test_estimate_without_sample_bounds_output_by_max_tokens_and_has_no_expected_value() -> None:
    estimate = build_estimate(
        chat_tally(), PRICES, source="f", exact_input=True, output_method="bound"
    )
    model = estimate.models[0]
    assert model.output_tokens == Span(0, None, 100 * 512)
    assert model.cost.low == pytest.approx(10_000 * 200 / 1e6)
    assert model.cost.high == pytest.approx((10_000 + 51_200) * 200 / 1e6)
    assert model.cost.expected is None


def test_estimate_with_sample_prices_the_projected_output() -> None:
    estimate = build_estimate(
        chat_tally(),
        PRICES,
        source="f",
        exact_input=True,
        output_method="sample",
        samples={"GigaChat": [100, 200, 300]},
    )
    assert estimate.cost.expected == pytest.approx((10_000 + 20_000) * 200 / 1e6)


def test_estimate_prices_each_model_at_its_own_rate() -> None:
    tally = Tally("chat")
    tally.add_row("GigaChat", output_bound=0)
    tally.add_row("GigaChat-Max", output_bound=0)
    tally.add_input("GigaChat", 1_000_000)
    tally.add_input("GigaChat-Max", 1_000_000)
    estimate = build_estimate(tally, PRICES, source="f", exact_input=True, output_method="b")
    assert [m.cost.low for m in estimate.models] == [200.0, 1950.0]
    assert estimate.cost.low == 2150.0


def test_embedding_estimate_has_no_output_tokens() -> None:
    tally = Tally("embed", has_output=False)
    tally.add_row("Embeddings")
    tally.add_input("Embeddings", 2_000_000)
    estimate = build_estimate(tally, PRICES, source="f", exact_input=True, output_method="none")
    assert estimate.output_tokens == Span(0, 0, 0)
    assert estimate.cost == Span(80.0, 80.0, 80.0)


def test_model_missed_by_the_sample_borrows_the_pooled_mean_and_says_so() -> None:
    tally = chat_tally()
    for _ in range(4):
        tally.add_row("GigaChat-Max", output_bound=100)
    estimate = build_estimate(
        tally,
        PRICES,
        source="f",
        exact_input=True,
        output_method="sample",
        samples={"GigaChat": [10, 20]},
    )
    missed = next(m for m in estimate.models if m.model == "GigaChat-Max")
    assert missed.output_tokens == Span(0, 60, 400)
    assert any("no sampled answer for GigaChat-Max" in note for note in estimate.notes)


def test_price_table_override_changes_the_cost() -> None:
    cheap = PriceTable(
        chat={"GigaChat": 1.0},
        embeddings={},
        default_chat=1.0,
        default_embeddings=1.0,
        taken="x",
        source="x",
    )
    estimate = build_estimate(chat_tally(), cheap, source="f", exact_input=True, output_method="b")
    assert estimate.cost.low == pytest.approx(10_000 / 1e6)


def test_balance_warning_when_the_expected_tokens_exceed_it() -> None:
    estimate = build_estimate(
        chat_tally(),
        PRICES,
        source="f",
        exact_input=True,
        output_method="sample",
        samples={"GigaChat": [100, 100, 100]},
    )
    report = check_balance(estimate, [BalanceEntry("GigaChat", 15_000)], CHAT_USAGE)
    assert report.warnings == [
        "the estimate for GigaChat (20,000 tokens expected) exceeds the balance (15,000 tokens)"
    ]


def test_balance_warning_at_the_bound_when_there_is_no_expected_value() -> None:
    estimate = build_estimate(chat_tally(), PRICES, source="f", exact_input=True, output_method="b")
    report = check_balance(estimate, [BalanceEntry("GigaChat", 15_000)], CHAT_USAGE)
    assert "at the max_tokens bound" in report.warnings[0]


def test_no_balance_warning_when_the_balance_covers_the_high_end() -> None:
    estimate = build_estimate(chat_tally(), PRICES, source="f", exact_input=True, output_method="b")
    assert check_balance(estimate, [BalanceEntry("GigaChat", 10**7)], CHAT_USAGE).warnings == []


def test_embeddings_are_checked_against_the_embeddings_balance() -> None:
    tally = Tally("embed", has_output=False)
    tally.add_row("EmbeddingsGigaR")
    tally.add_input("EmbeddingsGigaR", 500)
    estimate = build_estimate(tally, PRICES, source="f", exact_input=True, output_method="n")
    report = check_balance(estimate, [BalanceEntry("embeddings", 100)], EMBED_USAGE)
    assert "embeddings" in report.warnings[0]


def test_offline_table_is_labelled_as_an_approximation() -> None:
    estimate = build_estimate(
        chat_tally(), PRICES, source="f", exact_input=False, output_method="b"
    )
    text = render_table(estimate)
    assert text.startswith("OFFLINE APPROXIMATION")
    assert estimate_to_json(estimate)["mode"] == "offline-approximation"


def test_table_shows_rows_tokens_costs_and_the_price_date() -> None:
    estimate = build_estimate(
        chat_tally(), PRICES, source="jobs.jsonl", exact_input=True, output_method="bound"
    )
    text = render_table(estimate)
    assert "Estimate for jobs.jsonl (chat, 100 rows)" in text
    assert "10,000" in text and "51,200" in text
    assert "taken 2025-06-01" in text


def test_table_says_balance_unavailable_without_calling_it_an_error() -> None:
    estimate = build_estimate(
        chat_tally(), PRICES, source="jobs.jsonl", exact_input=True, output_method="bound"
    )
    balance = BalanceReport(None, [], note="HTTP 403: not a prepaid account")
    text = render_table(replace(estimate, balance=balance))
    assert "balance: unavailable (HTTP 403: not a prepaid account)" in text
    assert "error" not in text.lower()


def test_json_has_per_model_and_total_spans() -> None:
    estimate = build_estimate(chat_tally(), PRICES, source="f", exact_input=True, output_method="b")
    data = estimate_to_json(estimate)
    assert data["models"][0]["output_tokens"] == {"low": 0, "expected": None, "high": 51_200}
    assert data["total"]["input_tokens"] == 10_000
    assert data["prices"]["taken"] == "2025-06-01"


def test_reservoir_keeps_everything_while_the_stream_is_shorter_than_the_sample() -> None:
    reservoir: Reservoir[str] = Reservoir(5, seed=1)
    for n in range(3):
        reservoir.offer(str(n))
    assert reservoir.items == ["0", "1", "2"]


def test_reservoir_samples_uniformly() -> None:
    hits = [0] * 10
    for seed in range(2000):
        reservoir: Reservoir[int] = Reservoir(2, seed=seed)
        for n in range(10):
            reservoir.offer(n)
        for n in reservoir.items:
            hits[n] += 1
    # Each of 10 ids is in a sample of 2 with probability 0.2: 400 of 2000 expected.
    assert all(340 < h < 460 for h in hits)


def test_reservoir_with_a_seed_is_reproducible() -> None:
    def sample(seed: int) -> list[int]:
        reservoir: Reservoir[int] = Reservoir(3, seed=seed)
        for n in range(100):
            reservoir.offer(n)
        return reservoir.items

    assert sample(42) == sample(42)


def test_table_says_what_the_run_still_pays_after_a_kept_sample() -> None:
    report = SampleReport(
        requested=3,
        answered=3,
        failed=0,
        completion_tokens=600,
        prompt_tokens=300,
        cost=0.5,
        out="out/jobs",
        confidence=0.95,
    )
    estimate = build_estimate(
        chat_tally(),
        PRICES,
        source="f",
        exact_input=True,
        output_method="sample",
        samples={"GigaChat": [100, 200, 300]},
        sample_report=report,
    )
    # Expected 6.00 RUB in all, 0.50 of it already paid by the sample.
    assert "--out out/jobs" in render_table(estimate)
    assert "pays the rest, about 5.50 RUB" in render_table(estimate)


def test_recalibration_replaces_the_assumed_overhead_by_the_measured_one() -> None:
    tally = Tally("chat")
    tally.add_row("GigaChat", messages=2, cached_messages=1)
    tally.add_row("GigaChat", messages=2, cached_messages=0)
    tally.add_input("GigaChat", 100 + 4 * 3, cacheable=10 + 1 * 3)
    calibration = Calibration(jobs=2, messages=4, counted=100, billed=100 + 4 * 8, assumed=3)
    assert calibration.measured == 8
    assert not calibration.matches
    tally.recalibrate(calibration)
    assert tally.models["GigaChat"].input_tokens == 100 + 4 * 8
    assert tally.models["GigaChat"].cacheable_tokens == 10 + 1 * 8


def test_calibration_that_matches_says_so() -> None:
    calibration = Calibration(jobs=5, messages=10, counted=200, billed=230, assumed=3)
    assert calibration.matches
    assert calibration.describe() == (
        "the 5 sampled jobs were billed 3.00 tokens per message beyond /tokens/count, as assumed"
    )


def test_json_rounds_costs_to_millionths_and_tokens_to_whole_numbers() -> None:
    # 313,128 tokens at 200 RUB per 1M is 62.6256, which float arithmetic makes
    # 62.625600000000006 (issue 12).
    tally = Tally("chat")
    tally.add_row("GigaChat", output_bound=0)
    tally.add_input("GigaChat", 313_128)
    estimate = build_estimate(tally, PRICES, source="f", exact_input=True, output_method="b")
    assert estimate.cost.high == pytest.approx(62.6256) and estimate.cost.high != 62.6256
    data = estimate_to_json(estimate)
    assert data["total"]["cost"] == {"low": 62.6256, "expected": None, "high": 62.6256}
    assert data["total"]["output_tokens"] == {"low": 0, "expected": None, "high": 0}
    assert "62.6256," in orjson.dumps(data).decode()
