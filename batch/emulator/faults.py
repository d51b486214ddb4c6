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
