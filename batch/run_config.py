"""What one run is asked to do (`RunConfig`), and the API client it talks through.

Read by the engine (`batch.runner`), its preparation (`batch.preparing`) and the callers
that build runs: the CLI, the library API, the estimator and batches mode.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from batch.outage import DEFAULT_MAX_OUTAGE
from batch.output_uri import OutputURI
from batch.pricing import PriceTable
from batch.progress import ProgressMode
from batch.retry import RetryPolicy
from jobs.base import Job, JobKind

if TYPE_CHECKING:
    from batch.client import GigaChatClient
    from batch.settings import ClientSettings


@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs. `client_factory` (tests, embedding callers) replaces the
    client built from `client_settings`. With `max_cost` or `max_tokens` the run uses
    `kind.bounded()`, so every request's worst case is known before it is sent. A client
    built from `client_settings` is checked before the first job (batch/preflight.py); one
    from `client_factory` is the caller's to check. An outage longer than `max_outage`
    seconds stops the run."""

    jobs_path: Path
    out_dir: Path
    kind: JobKind
    client_settings: ClientSettings | None = None
    client_factory: Callable[[], AbstractAsyncContextManager[GigaChatClient]] | None = None
    max_concurrency: int = 16
    initial_concurrency: int = 2
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_outage: float = DEFAULT_MAX_OUTAGE
    flush_interval: float = 2.0
    flush_rows: int = 2000
    grace_period: float = 5.0
    skip_invalid: bool = False
    restart: bool = False
    retry_failed: bool = False
    prices: PriceTable | None = None
    max_cost: float | None = None
    max_tokens: int | None = None
    job_filter: Callable[[Job], bool] | None = None
    keep_columns: tuple[str, ...] = ()
    progress: ProgressMode = "auto"
    progress_interval: float | None = None
    handle_signals: bool = True
    disk_wait: float = 600.0
    locked_by_caller: bool = False  # the caller holds out_dir's RunLock (estimate --sample)
    # The answer cache: None uses it when the kind's answers are cached by default
    # (embeddings); `cache_dir` None is GIGABATCH_CACHE_DIR, else the user cache directory.
    cache: bool | None = None
    cache_dir: Path | None = None
    # Write only the rows whose id is new or whose answer changed since this earlier output,
    # and the ids that disappeared (OUT/removed/).
    changed_since: Path | None = None
    # A Ray cluster to run on (`local`, `auto` or an address; batch/cluster/), and how many
    # worker actors (None: one per CPU of the cluster).
    ray: str | None = None
    ray_workers: int | None = None
    # An output URI (batch/output_uri.py): parts, manifest and the run's files go there,
    # and `out_dir` is then its local state directory (lock, journal, event log).
    output: OutputURI | None = None

    @property
    def shown_out(self) -> str:
        """Where the output is, as messages and the summary say it (no credentials)."""
        return self.output.shown if self.output is not None else str(self.out_dir)


def open_client(
    config: RunConfig,
    max_connections: int,
    *,
    send_check: Callable[[], None] | None = None,
) -> AbstractAsyncContextManager[GigaChatClient]:
    """The client of a run: `config.client_factory`'s, else one from `config.client_settings`
    (else the environment) with a pool of `max_connections`."""
    if config.client_factory is not None:
        return config.client_factory()
    from batch.client import GigaChatClient

    settings = config.client_settings
    if settings is None:
        from batch.settings import ClientSettings

        settings = ClientSettings.from_env()
    return GigaChatClient(settings, max_connections=max_connections, send_check=send_check)
