"""Seeded fault injection: which fault (if any) a request gets, and the canned bodies the
faults answer with. The app applies them; the dice alone decide."""

from __future__ import annotations

import random

from batch.emulator.config import EmulatorConfig

# Fault kind -> the config knob holding its rate, in the order the dice check them.
FAULT_RATES = {
    "5xx": "fault_5xx",
    "html_502": "fault_html_502",
    "reset": "fault_reset",
    "hang": "fault_hang",
    "error_body": "fault_error_body",
    "storm": "fault_storm",
    "429": "fault_429",
    "401": "fault_401",
    "drip": "fault_drip",
}

HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


class FaultDice:
    """One seeded stream of decisions; the same seed and request order give the same faults."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(f"faults-{seed}")
        self._oauth_rng = random.Random(f"oauth-faults-{seed}")

    def roll(self, config: EmulatorConfig) -> str | None:
        rates = [(kind, getattr(config, knob)) for kind, knob in FAULT_RATES.items()]
        if not any(rate for _, rate in rates):
            return None
        x = self._rng.random()
        for kind, rate in rates:
            if x < rate:
                return kind
            x -= rate
        return None

    def oauth_refused(self, config: EmulatorConfig) -> bool:
        """Whether a token request gets a 429 (its own stream: API faults stay as seeded)."""
        rate = config.fault_oauth_429
        return rate > 0 and self._oauth_rng.random() < rate
