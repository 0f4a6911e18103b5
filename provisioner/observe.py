"""Watching a run: point-in-time snapshots and the observers that show or export them.

The runner builds a ``Snapshot`` on a timer for each ``RunObserver`` (the progress log
events, the terminal display, the Prometheus metrics file) and a final one when the run
ends. Observers only read snapshots: they cannot slow or change the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from .logs import get_logger
from .stats import iso

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The state of a run at one moment (all counts since the run started)."""

    run_id: str
    manifest: str
    workspace: str
    started_at: float  # epoch seconds
    elapsed_s: float
    rows_done: int
    counts: dict[str, int]  # by status: created, duplicate, skipped, failed, deferred
    requests: int
    retries: int
    http_429: int
    http_by_class: dict[str, int]  # "2xx", "4xx", "5xx"
    rows_per_s: float | None
    fraction_read: float | None  # how far through the manifest (None for stdin)
    eta_s: float | None
    quota_limit: int | None
    quota_remaining: int | None
    quota_reset_at: float | None  # epoch seconds
    paused_until: float | None  # epoch seconds, while waiting for a quota reset
    finished: bool = False
    exit_code: int | None = None
    errors: dict[str, int] = field(default_factory=dict)
    #: Every workspace's window: label -> (remaining, limit, reset epoch), when known.
    quotas: dict[str, tuple[int, int, float]] = field(default_factory=dict)


class RunObserver(Protocol):
    """Something that watches a run: called every ``interval`` seconds, then once at the end."""

    interval: float

    def update(self, snapshot: Snapshot) -> None:
        """Show or export a snapshot taken during the run."""

    def close(self, snapshot: Snapshot) -> None:
        """The final snapshot (``finished`` is True, ``exit_code`` set)."""


class ProgressLog:
    """The ``progress`` log event at a fixed interval (cron mail, journald, Kubernetes)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval

    def update(self, snapshot: Snapshot) -> None:
        """Log one progress event."""
        s = snapshot
        log.info(
            "progress",
            rows_done=s.rows_done,
            fraction_read=round(s.fraction_read, 4) if s.fraction_read is not None else None,
            eta_s=round(s.eta_s) if s.eta_s is not None else None,
            counts={k: v for k, v in s.counts.items() if v},
            rows_per_s=s.rows_per_s,
            requests=s.requests,
            quota_remaining=s.quota_remaining,
            paused_until=iso(s.paused_until) if s.paused_until else None,
        )

    def close(self, snapshot: Snapshot) -> None:
        """Nothing: ``run_finished`` is logged by the runner."""
