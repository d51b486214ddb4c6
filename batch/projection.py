"""From a random sample of jobs to the whole file: which jobs to answer (a reservoir over
a stream of unknown length) and what their answers say about the total (a Student-t
interval with the finite-population correction). Pure arithmetic, no dependencies.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


class Reservoir(Generic[T]):
    """A uniform random sample of `size` items from a stream of unknown length, in memory
    for `size` items only (Vitter's algorithm R); seeded, so a seeded estimate samples the
    same jobs every time."""

    def __init__(self, size: int, seed: int | None = None) -> None:
        if size < 1:
            raise ValueError("a sample needs at least one job")
        self.size = size
        self.seen = 0
        self.items: list[T] = []
        self._rng = random.Random(seed)

    def offer(self, item: T) -> None:
        self.seen += 1
        if len(self.items) < self.size:
            self.items.append(item)
            return
        slot = self._rng.randrange(self.seen)
        if slot < self.size:
            self.items[slot] = item


@dataclass(frozen=True, slots=True)
class Span:
    """Low, expected and high of one quantity; `expected` is None when nothing supports a
    point value (output tokens without a sample)."""

    low: float
    expected: float | None
    high: float

    def __add__(self, other: Span) -> Span:
        expected = (
            None
            if self.expected is None or other.expected is None
            else self.expected + other.expected
        )
        return Span(self.low + other.low, expected, self.high + other.high)

    def scaled(self, factor: float) -> Span:
        expected = None if self.expected is None else self.expected * factor
        return Span(self.low * factor, expected, self.high * factor)


def _t_density(t: float, df: int) -> float:
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_norm - (df + 1) / 2 * math.log1p(t * t / df))


def _t_cdf(t: float, df: int, steps: int = 400) -> float:
    """P(T <= t) for t >= 0, by Simpson's rule on the density (smooth, so 400 steps suffice)."""
    h = t / steps
    inner = sum((4 if i % 2 else 2) * _t_density(i * h, df) for i in range(1, steps))
    return 0.5 + h / 3 * (_t_density(0.0, df) + inner + _t_density(t, df))


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with `df` degrees of freedom (p > 0.5).

    Exact for df 1 and 2; above that the Cornish-Fisher expansion (Abramowitz & Stegun
    26.7.5) polished by Newton steps on the CDF (no scipy dependency for one number).
    """
    if not 0.5 < p < 1:
        raise ValueError("p must be in (0.5, 1)")
    if df < 1:
        raise ValueError("df must be at least 1")
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    z = statistics.NormalDist().inv_cdf(p)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    t = z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4
    for _ in range(3):
        t -= (_t_cdf(t, df) - p) / _t_density(t, df)
    return t


def project_total(
    sample: Sequence[int],
    population: int,
    *,
    confidence: float = 0.95,
    bound: float | None = None,
) -> Span:
    """Total of a quantity over `population` rows from a simple random sample of them
    (without replacement): expected N * mean, with a Student-t interval whose standard
    error carries the finite-population correction, sqrt(1 - n/N).

    Why t and not a bootstrap: answer lengths are bounded (by max_tokens), so the sample
    mean is close to normal for the sample sizes people use (tens to hundreds), t widens the
    interval honestly for small ones, and it costs nothing. The interval is clipped to what
    is certain: no less than the sample's own total (the other rows cannot be negative),
    no more than `bound` (the sum of the rows' max_tokens) when there is one.
    """
    n = len(sample)
    if n == 0:
        raise ValueError("an empty sample projects nothing")
    if n > population:
        raise ValueError("the sample is larger than the population")
    seen = float(sum(sample))
    mean = seen / n
    expected = mean * population
    if n == population:
        return Span(seen, seen, seen)
    if n == 1:
        low, high = seen, math.inf
    else:
        stdev = statistics.stdev(sample)
        fpc = math.sqrt(1 - n / population)
        margin = t_quantile(0.5 + confidence / 2, n - 1) * population * stdev / math.sqrt(n) * fpc
        low, high = expected - margin, expected + margin
    low = max(low, seen)
    if bound is not None:
        high = min(high, bound)
        expected = min(expected, bound)
    return Span(low, expected, high)
