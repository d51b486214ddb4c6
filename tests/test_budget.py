"""Budget: reservations before sending, settlement after, refusal before crossing a limit."""

from __future__ import annotations

import random

import pytest

from batch.api_types import Usage
from batch.budget import Budget, Reservation
from batch.errors import BudgetExhausted
from batch.pricing import PriceTable

PRICES = PriceTable(
    chat={"GigaChat": 200.0, "GigaChat-Max": 1950.0},
    embeddings={"Embeddings": 40.0},
    default_chat=1950.0,
    default_embeddings=40.0,
    taken="test",
    source="test",
)

# 1,000 tokens of GigaChat at 200 RUB per million cost 0.20 RUB.
THOUSAND = Usage(prompt_tokens=600, completion_tokens=400)


def test_reserve_within_budget_holds_the_ceiling() -> None:
    budget = Budget(max_cost=1.0, max_tokens=None, prices=PRICES)
    reservation = budget.reserve(THOUSAND, "GigaChat")
    assert reservation.cost == pytest.approx(0.2)
    assert budget.reserved_cost == pytest.approx(0.2)
    assert budget.spent_cost == 0.0


def test_reserve_refuses_when_outstanding_reservations_would_cross_max_cost() -> None:
    budget = Budget(max_cost=1.0, max_tokens=None, prices=PRICES)
    for _ in range(5):
        budget.reserve(THOUSAND, "GigaChat")
    with pytest.raises(BudgetExhausted):
        budget.reserve(THOUSAND, "GigaChat")


def test_reserve_accepts_a_ceiling_that_lands_exactly_on_the_limit() -> None:
    budget = Budget(max_cost=0.6, max_tokens=None, prices=PRICES)
    for _ in range(3):
        budget.reserve(THOUSAND, "GigaChat")
    assert budget.reserved_cost == pytest.approx(0.6)


def test_many_small_reservations_never_drift_over_the_limit() -> None:
    # 0.1 RUB steps are inexact in binary floats; 10 of them must fit 1.00, the 11th must not.
    one_tenth = Usage(prompt_tokens=500)
    budget = Budget(max_cost=1.0, max_tokens=None, prices=PRICES)
    held = [budget.reserve(one_tenth, "GigaChat") for _ in range(10)]
    with pytest.raises(BudgetExhausted):
        budget.reserve(one_tenth, "GigaChat")
    for reservation in held:
        budget.settle(reservation, one_tenth, "GigaChat")
    assert budget.spent_cost == pytest.approx(1.0)
    assert budget.reserved_cost == 0.0


def test_reserve_refuses_when_spent_plus_ceiling_would_cross_max_tokens() -> None:
    budget = Budget(max_cost=None, max_tokens=1500, prices=PRICES, spent_tokens=600)
    with pytest.raises(BudgetExhausted, match="up to 1000 tokens"):
        budget.reserve(THOUSAND, "GigaChat")


def test_settle_replaces_the_reservation_by_the_actual_cost() -> None:
    budget = Budget(max_cost=1.0, max_tokens=None, prices=PRICES)
    reservation = budget.reserve(THOUSAND, "GigaChat")
    budget.settle(reservation, Usage(prompt_tokens=600, completion_tokens=50), "GigaChat:2.0.28.2")
    assert budget.spent_cost == pytest.approx(0.13)
    assert budget.spent_tokens == 650
    assert budget.reserved_cost == 0.0
    assert budget.outstanding == 0


def test_settle_frees_room_for_the_next_reservation() -> None:
    budget = Budget(max_cost=0.3, max_tokens=None, prices=PRICES)
    reservation = budget.reserve(THOUSAND, "GigaChat")
    with pytest.raises(BudgetExhausted):
        budget.reserve(THOUSAND, "GigaChat")
    budget.settle(reservation, Usage(prompt_tokens=100), "GigaChat")
    budget.reserve(Usage(prompt_tokens=1000), "GigaChat")


def test_precached_prompt_tokens_are_not_charged() -> None:
    budget = Budget(max_cost=None, max_tokens=100, prices=PRICES)
    reservation = budget.reserve(Usage(prompt_tokens=50), "GigaChat")
    budget.settle(reservation, Usage(prompt_tokens=50, precached_prompt_tokens=900), "GigaChat")
    assert budget.spent_tokens == 50


def test_release_drops_the_reservation_without_spending() -> None:
    budget = Budget(max_cost=0.2, max_tokens=None, prices=PRICES)
    reservation = budget.reserve(THOUSAND, "GigaChat")
    budget.release(reservation)
    assert budget.spent_cost == 0.0
    assert budget.outstanding == 0
    budget.reserve(THOUSAND, "GigaChat")


def test_release_after_settle_keeps_the_spend() -> None:
    budget = Budget(max_cost=1.0, max_tokens=None, prices=PRICES)
    reservation = budget.reserve(THOUSAND, "GigaChat")
    budget.settle(reservation, THOUSAND, "GigaChat")
    budget.release(reservation)
    assert budget.spent_cost == pytest.approx(0.2)
    assert budget.reserved_cost == 0.0


def test_reservation_is_priced_by_model() -> None:
    budget = Budget(max_cost=10.0, max_tokens=None, prices=PRICES)
    assert budget.reserve(THOUSAND, "GigaChat-Max").cost == pytest.approx(1.95)
    assert budget.reserve(THOUSAND, "Embeddings").cost == pytest.approx(0.04)


def test_spent_from_a_previous_attempt_counts_against_the_limit() -> None:
    budget = Budget(max_cost=1.0, max_tokens=None, prices=PRICES, spent_cost=0.9)
    with pytest.raises(BudgetExhausted):
        budget.reserve(THOUSAND, "GigaChat")


def test_crossing_without_reservations_tells_whether_waiting_could_help() -> None:
    budget = Budget(max_cost=0.3, max_tokens=None, prices=PRICES)
    budget.reserve(THOUSAND, "GigaChat")
    assert budget.crossing(THOUSAND, "GigaChat") is not None
    assert budget.crossing(THOUSAND, "GigaChat", with_reserved=False) is None


def test_interleaved_concurrent_requests_never_spend_more_than_the_budget() -> None:
    # Many requests in flight at once, settling out of order at up to their ceiling.
    rng = random.Random(7)
    budget = Budget(max_cost=5.0, max_tokens=None, prices=PRICES)
    in_flight: list[tuple[Reservation, Usage]] = []
    refused = 0
    for _ in range(2000):
        if in_flight and rng.random() < 0.5:
            reservation, ceiling = in_flight.pop(rng.randrange(len(in_flight)))
            if rng.random() < 0.1:
                budget.release(reservation)
            else:
                actual = Usage(
                    prompt_tokens=ceiling.prompt_tokens,
                    completion_tokens=rng.randint(0, ceiling.completion_tokens),
                )
                budget.settle(reservation, actual, "GigaChat")
        else:
            ceiling = Usage(prompt_tokens=rng.randint(10, 500), completion_tokens=512)
            try:
                in_flight.append((budget.reserve(ceiling, "GigaChat"), ceiling))
            except BudgetExhausted:
                refused += 1
        assert budget.spent_cost + budget.reserved_cost <= 5.0 + 1e-9
    assert refused > 0
    assert budget.spent_cost <= 5.0


def test_exhausted_message_says_what_was_spent_and_what_is_left() -> None:
    budget = Budget(max_cost=15.0, max_tokens=None, prices=PRICES, spent_cost=12.3)
    with pytest.raises(BudgetExhausted, match=r"spent 12\.30 RUB of 15\.00, 2\.70 left"):
        budget.reserve(Usage(prompt_tokens=20_000_000), "GigaChat")


def test_describe_reports_cost_and_tokens() -> None:
    budget = Budget(
        max_cost=15.0, max_tokens=5000, prices=PRICES, spent_cost=12.3, spent_tokens=1234
    )
    assert budget.describe() == (
        "spent 12.30 RUB of 15.00, 2.70 left; spent 1234 tokens of 5000, 3766 left"
    )


def test_describe_uses_four_decimals_for_sub_ruble_budgets() -> None:
    budget = Budget(max_cost=0.05, max_tokens=None, prices=PRICES)
    reservation = budget.reserve(Usage(prompt_tokens=100), "GigaChat")
    budget.settle(reservation, Usage(prompt_tokens=100), "GigaChat")
    assert budget.describe() == "spent 0.0200 RUB of 0.0500, 0.0300 left"


def test_describe_without_limits_reports_the_spend() -> None:
    budget = Budget(max_cost=None, max_tokens=None, prices=PRICES)
    reservation = budget.reserve(THOUSAND, "GigaChat")
    budget.settle(reservation, THOUSAND, "GigaChat")
    assert budget.describe() == "spent 0.2000 RUB"


def test_negative_limits_are_rejected() -> None:
    with pytest.raises(ValueError, match="max_cost"):
        Budget(max_cost=-1.0, max_tokens=None, prices=PRICES)
