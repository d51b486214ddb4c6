"""The control endpoints under `/_emulator/` (outside `/api`, never counted in the stats):
the stats snapshot and its reset, and reading or changing the running config."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson

from batch.emulator.call import Call
from batch.emulator.chat import RequestRejected
from batch.emulator.config import EmulatorConfig, coerce_knobs
from batch.emulator.replies import NOT_FOUND, error_body, json_body, reject

if TYPE_CHECKING:
    from batch.emulator.app import EmulatorApp


def describe(app: EmulatorApp) -> dict[str, Any]:
    """The running config plus what follows from it."""
    return {
        "config": app.config.to_dict(),
        "stream_limit": app.config.effective_stream_limit,
        "storm_remaining_s": app.storm.remaining(time.time()),
        "outage_remaining_s": app.outage.remaining(time.time()),
    }


def reconfigure(app: EmulatorApp, knobs: dict[str, Any]) -> None:
    """Change runtime knobs (ValueError for unknown, fixed or invalid ones);
    `start_storm_s` opens a 429 storm of that many seconds now, `start_outage_s` an
    outage (see `outage_mode`; 0 ends one)."""
    knobs = dict(knobs)
    storm = knobs.pop("start_storm_s", None)
    outage = knobs.pop("start_outage_s", None)
    changes = coerce_knobs(knobs)
    fixed = sorted(
        name for name in changes
        if not EmulatorConfig.__dataclass_fields__[name].metadata["runtime"]
    )
    if fixed:
        raise ValueError(f"cannot change while running: {', '.join(fixed)}")
    app.config = app.config.replace(**changes)
    if "seed" in changes:
        app.seed(app.config.seed)
    if "balance_tokens" in changes:
        app.balance = app.fresh_balance()
    if storm is not None:
        app.storm.start(time.time(), float(storm))
    if outage is not None:
        if float(outage) > 0:
            app.outage.start(time.time(), float(outage))
        else:
            app.outage.end()


async def serve_control(app: EmulatorApp, call: Call) -> None:
    path, method = call.path, call.method
    if path == "/_emulator/stats" and method == "GET":
        query = parse_qs(call.query.decode("latin-1"))
        arrivals = query.get("arrivals", ["1"])[0] != "0"
        snapshot = app.stats.snapshot(arrivals=arrivals)
        snapshot["stream_limit"] = app.config.effective_stream_limit
        snapshot["in_flight"] = app.streams.total()
        await call.reply(200, orjson.dumps(snapshot))
    elif path == "/_emulator/reset" and method == "POST":
        app.stats.reset()
        await call.reply(200, orjson.dumps({"reset": True}))
    elif path == "/_emulator/config" and method == "GET":
        await call.reply(200, orjson.dumps(describe(app)))
    elif path == "/_emulator/config" and method == "POST":
        try:
            reconfigure(app, json_body(call))
        except RequestRejected as exc:
            await reject(call, exc)
            return
        except ValueError as exc:
            await call.reply(422, error_body(422, str(exc)))
            return
        await call.reply(200, orjson.dumps(describe(app)))
    else:
        await call.reply(404, NOT_FOUND)
