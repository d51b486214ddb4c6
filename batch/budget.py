"""The run's spending limit: `--max-cost RUB` and `--max-tokens N`.

Before a request is sent the engine reserves the most it could be billed (the job kind's
conservative ceiling); after the answer it settles the reservation with the real usage, or
releases it when nothing was billed. A reservation is refused when everything spent, plus
everything still reserved, plus the new ceiling could cross a limit, so however many requests
are in flight, the run never spends more than its budget (as long as ceilings are honest).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from batch.api_types import Usage
from batch.errors import BudgetExhausted
from batch.pricing import PriceTable

if TYPE_CHECKING:
    from batch.checkpoint import Totals

_MILLION = 1_000_000


@dataclass(frozen=True, slots=True)
class Reservation:
    """What one request may cost at most, held until it is settled or released."""

    id: int
    model: str
    tokens: int
    # Cost in millionths of a ruble (tokens x price per million): exact for integer prices,
    # so many small reservations add up without float drift pushing a run over its limit.
    micro_cost: float

    @property
    def cost(self) -> float:
        return self.micro_cost / _MILLION


def _billed_tokens(usage: Usage) -> int:
    """Tokens that count against --max-tokens: the billed ones (precached are free)."""
    return usage.prompt_tokens + usage.completion_tokens


def format_rub(value: float, scale: float | None = None) -> str:
    """Rubles with two decimals, or four when the amounts involved are below one ruble."""
    reference = abs(scale if scale is not None else value)
    return f"{value:.4f}" if 0 < reference < 1 else f"{value:.2f}"


class Budget:
    """Spent and reserved cost and tokens of one run against optional limits.

    Not thread-safe: the engine's workers share one event loop, and no method awaits.
    """

    def __init__(
        self,
        *,
        max_cost: float | None,
        max_tokens: int | None,
        prices: PriceTable,
        spent_cost: float = 0.0,
        spent_tokens: int = 0,
    ) -> None:
        if max_cost is not None and max_cost < 0:
            raise ValueError("max_cost must not be negative")
        if max_tokens is not None and max_tokens < 0:
            raise ValueError("max_tokens must not be negative")
        self.max_cost = max_cost
        self.max_tokens = max_tokens
        self.prices = prices
        self._spent_micro = spent_cost * _MILLION
        self.spent_tokens = spent_tokens
        self._outstanding: dict[int, Reservation] = {}
        self._reserved_micro = 0.0
        self._reserved_tokens = 0
        self._ids = itertools.count()

    @classmethod
    def over_output(
        cls, *, max_cost: float | None, max_tokens: int | None, prices: PriceTable, totals: Totals
    ) -> Budget:
        """The budget of a run into an output directory: what its committed rows cost at
        `prices` counts as spent already (the budget covers the whole directory)."""
        spent = totals.tokens
        return cls(
            max_cost=max_cost,
            max_tokens=max_tokens,
            prices=prices,
            spent_cost=totals.cost(prices),
            spent_tokens=spent.prompt_tokens + spent.completion_tokens,
        )

    @property
    def spent_cost(self) -> float:
        return self._spent_micro / _MILLION

    @property
    def reserved_cost(self) -> float:
        return self._reserved_micro / _MILLION

    @property
    def reserved_tokens(self) -> int:
        return self._reserved_tokens

    @property
    def outstanding(self) -> int:
        """Reservations neither settled nor released (requests in flight)."""
        return len(self._outstanding)

    def _micro_cost(self, usage: Usage, model: str) -> float:
        return _billed_tokens(usage) * self.prices.price_per_million(model)

    def crossing(self, ceiling: Usage, model: str, *, with_reserved: bool = True) -> str | None:
        """Why a request with this ceiling could cross a limit, or None when it fits.
        With `with_reserved=False` the question is whether it could ever fit once every
        request in flight has settled at no cost (the engine may wait instead of stopping)."""
        tokens = _billed_tokens(ceiling)
        micro = self._micro_cost(ceiling, model)
        held_micro = self._reserved_micro if with_reserved else 0.0
        held_tokens = self._reserved_tokens if with_reserved else 0
        if self.max_cost is not None and (
            self._spent_micro + held_micro + micro > self.max_cost * _MILLION
        ):
            return f"the next request could cost up to {format_rub(micro / _MILLION)} RUB"
        if self.max_tokens is not None and (
            self.spent_tokens + held_tokens + tokens > self.max_tokens
        ):
            return f"the next request could use up to {tokens} tokens"
        return None

    def reserve(self, ceiling: Usage, model: str) -> Reservation:
        """Hold the most a request can be billed; raises BudgetExhausted when spent plus
        outstanding reservations plus this ceiling could cross a limit."""
        why = self.crossing(ceiling, model)
        if why is not None:
            raise BudgetExhausted(f"budget reached: {why}; {self.describe()}")
        return self.hold(ceiling, model)

    def hold(self, ceiling: Usage, model: str) -> Reservation:
        """Hold `ceiling` without asking whether it fits: for a request already sent (a
        batch of an earlier run, re-attached), whose cost will come whatever the budget."""
        reservation = Reservation(
            id=next(self._ids),
            model=model,
            tokens=_billed_tokens(ceiling),
            micro_cost=self._micro_cost(ceiling, model),
        )
        self._outstanding[reservation.id] = reservation
        self._reserved_micro += reservation.micro_cost
        self._reserved_tokens += reservation.tokens
        return reservation

    def _drop(self, reservation: Reservation) -> None:
        if self._outstanding.pop(reservation.id, None) is None:
            return
        self._reserved_micro -= reservation.micro_cost
        self._reserved_tokens -= reservation.tokens
        if not self._outstanding:  # wipe accumulated float error when nothing is held
            self._reserved_micro = 0.0
            self._reserved_tokens = 0

    def settle(self, reservation: Reservation, actual: Usage, model: str) -> None:
        """The request was answered: replace its reservation by what it really cost.
        `model` is the model that answered (a version string such as `GigaChat:2.0.28.2`
        is priced as its base name). The spend counts even if the reservation was released."""
        self._drop(reservation)
        self._spent_micro += self._micro_cost(actual, model)
        self.spent_tokens += _billed_tokens(actual)

    def release(self, reservation: Reservation) -> None:
        """The request failed and was not billed: give its reservation back. Releasing a
        reservation twice, or after settling it, does nothing."""
        self._drop(reservation)

    def describe(self) -> str:
        """One line on spending: "spent 12.30 RUB of 15.00, 2.70 left" (and tokens likewise)."""
        parts: list[str] = []
        if self.max_cost is not None or self.max_tokens is None:
            spent = self.spent_cost
            if self.max_cost is None:
                parts.append(f"spent {format_rub(spent)} RUB")
            else:
                left = max(0.0, self.max_cost - spent)
                scale = self.max_cost
                parts.append(
                    f"spent {format_rub(spent, scale)} RUB of {format_rub(self.max_cost, scale)}, "
                    f"{format_rub(left, scale)} left"
                )
        if self.max_tokens is not None:
            left_tokens = max(0, self.max_tokens - self.spent_tokens)
            parts.append(
                f"spent {self.spent_tokens} tokens of {self.max_tokens}, {left_tokens} left"
            )
        return "; ".join(parts)
