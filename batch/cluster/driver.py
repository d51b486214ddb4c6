"""The driver's side of a run on Ray: connect, start the coordinator and the workers, hand
them batches, and keep the cluster's token fresh. Everything else (validation, the
checkpoint, packing, the writer, the summary) is the ordinary run in `batch.runner`, so
exactly-once and resume come from the driver's checkpoint as they do locally.

    open_cluster(...)  -> ClusterSender (`batch.cluster.dispatch`): `send(client, batch)`
                          through a worker actor
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import orjson

from batch.cluster.coordinator import Coordinator, CoordinatorReport
from batch.cluster.dispatch import ClusterSender, DriverDuties
from batch.cluster.worker import NAMESPACE, BatchWorker, shareable_settings
from batch.errors import ApiError, ConfigError, GigabatchError
from batch.outage import DEFAULT_MAX_OUTAGE, clock_time
from batch.stopping import RunStop
from batch.summary import RunStats
from jobs.base import JobKind

if TYPE_CHECKING:
    from batch.auth import Authenticator
    from batch.client import GigaChatClient
    from batch.retry import RetryPolicy
    from batch.settings import ClientSettings

logger = logging.getLogger(__name__)

# How often the driver checks its token (it refreshes ahead of expiry by itself).
TOKEN_CHECK = 5.0


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--ray needs Ray: pip install 'gigabatch[ray]' (on the driver and every node)"
        ) from None
    return ray


def connect(address: str) -> bool:
    """Join the cluster `address` names (`local` starts one here); True when this call
    started Ray and so must shut it down."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    _check_reachable(address)
    try:
        ray.init(
            address=address,
            namespace=NAMESPACE,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.ERROR,
        )
    except ConnectionError as exc:
        raise ConfigError(
            f"cannot join the Ray cluster at {address!r} ({exc}): start one with "
            "'ray start --head', or use --ray local"
        ) from None
    return True


def _check_reachable(address: str) -> None:
    """An explicit HOST:PORT that nothing answers is refused in seconds (Ray itself retries
    for minutes before it gives up)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or address.startswith(("ray://", "local", "auto")):
        return
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise ConfigError(
            f"no Ray cluster answers at {address} ({exc.strerror or exc}): start one with "
            "'ray start --head', or use --ray local"
        ) from None


@dataclass(frozen=True)
class ClusterPlan:
    """What the cluster runs: `workers` actors (None: one per CPU of the cluster)."""

    address: str
    kind: JobKind
    settings: ClientSettings
    retry: RetryPolicy
    max_concurrency: int
    initial_concurrency: int = 2
    workers: int | None = None
    out_dir: Path | None = None  # where cluster.json (the coordinator's figures) goes
    max_outage: float = DEFAULT_MAX_OUTAGE
    answers_keyed_by: str | None = None  # what workers make answers into (`batch.reuse`)


@asynccontextmanager
async def open_cluster(
    plan: ClusterPlan,
    client: GigaChatClient,
    stats: RunStats,
    stop: RunStop,
    duties: DriverDuties | None = None,
) -> AsyncIterator[ClusterSender]:
    """The cluster for one run: joined (or started), its coordinator and workers up, the
    token published; on leaving, the coordinator's report is kept and the actors end."""
    if plan.settings.key_file_password is not None:
        raise ConfigError(
            "--ray cannot pass GIGACHAT_KEY_FILE_PASSWORD to workers: use an unencrypted key "
            "file on every node, or GIGACHAT_CREDENTIALS"
        )
    ray = import_ray()
    # In this thread: Ray's driver sets its signal handlers only from the main thread.
    started = connect(plan.address)
    actors: list[Any] = []
    try:
        coordinator, workers = await anyio.to_thread.run_sync(_start_actors, ray, plan)
        actors = [coordinator, *workers]
        sender = ClusterSender(ray, workers, plan.kind, stats, stop, duties)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_keep_token_fresh, client.auth, coordinator, stop)
            announce = duties.announce if duties is not None else None
            tg.start_soon(_follow_outages, coordinator, sender, announce)
            yield sender
            tg.cancel_scope.cancel()
        sender.report = await coordinator.summary.remote()
        if plan.out_dir is not None:
            await anyio.to_thread.run_sync(
                _write_report, plan.out_dir, sender.report, len(workers), sender.lost_batches
            )
        with anyio.move_on_after(5):
            await _close_workers(ray, workers)
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)
        if started:
            await anyio.to_thread.run_sync(ray.shutdown)


def _write_report(
    out_dir: Path, report: CoordinatorReport, workers: int, lost_batches: int
) -> None:
    """OUT/cluster.json: what the coordinator did and cost this run."""
    figures = {
        **dataclasses.asdict(report),
        "cpu_us_per_request": round(report.cpu_us_per_request, 1),
        "loop_cpu_us_per_request": round(report.loop_cpu_us_per_request, 1),
        "slots_per_lease": round(report.slots / report.leases, 2) if report.leases else 0.0,
        "workers": workers,
        "lost_batches": lost_batches,
    }
    path = out_dir / "cluster.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
    tmp.replace(path)


def _start_actors(ray: Any, plan: ClusterPlan) -> tuple[Any, list[Any]]:
    run = uuid.uuid4().hex[:12]
    count = plan.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    name = f"coordinator-{run}"
    coordinator = (
        ray.remote(Coordinator)
        .options(name=name, namespace=NAMESPACE, num_cpus=0, max_concurrency=10_000)
        .remote(plan.max_concurrency, plan.initial_concurrency, plan.max_outage)
    )
    settings = shareable_settings(plan.settings)
    worker_class = ray.remote(BatchWorker)
    workers = [
        worker_class.options(
            name=f"worker-{run}-{i}",
            namespace=NAMESPACE,
            num_cpus=0,
            max_restarts=-1,
            max_task_retries=0,
            max_concurrency=plan.max_concurrency * 2 + 8,
        ).remote(
            f"worker-{i}",
            name,
            plan.kind,
            settings,
            plan.retry,
            plan.max_concurrency,
            plan.answers_keyed_by,
            plan.max_outage,
        )
        for i in range(count)
    ]
    return coordinator, workers


async def _close_workers(ray: Any, workers: list[Any]) -> None:
    for worker in workers:
        try:
            await worker.close.remote()
        except ray.exceptions.RayError:
            continue


async def _follow_outages(
    coordinator: Any, sender: ClusterSender, announce: Callable[[str], None] | None
) -> None:
    """Follow the coordinator's outage: the sender keeps when it began (the progress line
    says PAUSED meanwhile), and its beginning and end are announced as a local run's are."""
    known = 0.0
    while True:
        since = await coordinator.next_outage.remote(known)
        sender.outage_since = since
        if announce is not None:
            announce(_outage_news(since, known))
        known = since


def _outage_news(since: float, known: float) -> str:
    """The line saying an outage began at `since` (0: the one since `known` ended)."""
    if since:
        return (
            f"API unreachable since {clock_time(since)} (requests from the cluster's "
            "workers fail); paused, probing with one request"
        )
    now = time.time()
    return (
        f"API back at {clock_time(now)} after {now - known:.1f} s "
        f"(away since {clock_time(known)}); resuming"
    )


async def _keep_token_fresh(auth: Authenticator, coordinator: Any, stop: RunStop) -> None:
    """Publish the driver's token to the coordinator, refresh it ahead of its expiry (the
    Authenticator does) and when a worker's request got 401: one refresh for the cluster."""
    published = -1
    while True:
        try:
            header, generation = await auth.authorization()
            if generation != published:
                await coordinator.publish_token.remote(header)
                published = generation
            if await coordinator.token_wanted.remote(TOKEN_CHECK):
                await auth.unauthorized(generation, ApiError("token rejected", status=401))
                published = -1  # whatever the refresh did, answer the workers that wait
        except GigabatchError as exc:
            await coordinator.publish_token.remote(None, str(exc))
            stop.stop("fatal", str(exc), exc)
            return
