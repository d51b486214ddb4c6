"""The emulator's pacer: waits end early by the timer's mean lateness, within bounds."""

from __future__ import annotations

import random

import pytest

from batch.emulator.pacing import MAX_LEAD_S, Pacer


def serve(pacer: Pacer, answers: int, lateness: float, rng: random.Random) -> list[float]:
    """Pace `answers` answers due at 50 ms through a timer that fires `lateness` late on
    average (give or take 0.3 ms); how late each one went out."""
    lates = []
    for _ in range(answers):
        due, now = 0.050, 0.0
        sent = now + pacer.remaining(due, now) + lateness + rng.uniform(-0.0003, 0.0003)
        pacer.observe(sent - due)
        lates.append(sent - due)
    return lates


def test_lead_converges_on_the_timers_mean_lateness() -> None:
    pacer = Pacer()
    lates = serve(pacer, 400, 0.0006, random.Random(1))
    assert pacer.lead == pytest.approx(0.0006, abs=0.0001)
    assert sum(lates[200:]) / 200 == pytest.approx(0.0, abs=0.00005)


def test_lead_never_exceeds_its_cap_however_slow_the_server() -> None:
    pacer = Pacer()
    serve(pacer, 500, 0.010, random.Random(2))
    assert pacer.lead == MAX_LEAD_S


def test_a_timer_that_fires_early_never_makes_waits_longer() -> None:
    pacer = Pacer()
    serve(pacer, 100, -0.001, random.Random(3))
    assert pacer.lead == 0.0
    assert pacer.remaining(1.0, 0.25) == 0.75
