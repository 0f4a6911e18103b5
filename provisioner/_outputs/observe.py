"""Watching a run: point-in-time snapshots and the observers that show or export them.

``watch`` samples a run (``snapshot``) on a timer for each ``RunObserver`` (the progress
log events, the terminal display, the Prometheus metrics file), and the run ends with a
final one. Observers only read snapshots: they cannot slow or change the pipeline.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from provisioner._core.logs import get_logger
from provisioner._core.models import Status
from provisioner._core.times import iso
from provisioner._outputs.summary import rows_sent

if TYPE_CHECKING:
    from provisioner._pipeline.runner import Run
    from provisioner._pipeline.workspace_lane import Lane

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class WorkspaceFigures:
    """One workspace's share of a snapshot: its own rows, requests and quota window."""

    name: str  # the configured name ("default" without [[workspaces]])
    counts: dict[str, int]
    requests: int
    retries: int
    http_429: int
    http_by_class: dict[str, int]
    rows_per_s: float | None
    quota_limit: int | None
    quota_remaining: int | None
    quota_reset_at: float | None


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
    #: Every workspace's own figures: label -> figures (the totals above add them up).
    by_workspace: dict[str, WorkspaceFigures] = field(default_factory=dict)


class RunObserver(Protocol):
    """Something that watches a run: called every ``interval`` seconds, then once at the end."""

    interval: float

    def update(self, snapshot: Snapshot) -> None:
        """Show or export a snapshot taken during the run."""

    def close(self, snapshot: Snapshot) -> None:
        """The final snapshot (``finished`` is True, ``exit_code`` set)."""


def snapshot(run: Run, *, exit_code: int | None = None) -> Snapshot:
    """``run``'s state now, for observers (progress log, display, metrics file)."""
    elapsed = run.stats.elapsed()
    done = run.stats.rows_done
    read = run.manifest.fraction_read() if run.manifest is not None else None
    # The reader runs ahead of the workers (a whole small file is read at once), so the
    # share of the file read is scaled by the share of the rows read that are done.
    fraction = None if read is None else read * done / max(1, run.rows_read)
    b = run.default.budget
    paused = [lane.budget.paused_until for lane in run.lanes.values()]
    return Snapshot(
        run_id=run.run_id,
        manifest=run.manifest_name,
        workspace=run.default.label,
        started_at=run.stats.started_at,
        elapsed_s=elapsed,
        rows_done=done,
        counts={s.value: run.stats.counts.get(s.value, 0) for s in Status},
        requests=run.stats.requests,
        retries=run.stats.retries,
        http_429=run.stats.http_429,
        http_by_class=dict(run.stats.http_by_class),
        rows_per_s=round(rows_sent(run.stats.counts) / elapsed, 1) if elapsed > 0 else None,
        fraction_read=fraction,
        eta_s=elapsed * (1 - fraction) / fraction if fraction else None,
        quota_limit=b.limit,
        quota_remaining=b.remaining,
        quota_reset_at=b.reset_at,
        paused_until=max((p for p in paused if p is not None), default=None),
        finished=exit_code is not None,
        exit_code=exit_code,
        errors=dict(run.stats.errors),
        quotas={
            lane.label: (lane.budget.remaining, lane.budget.limit, lane.budget.reset_at)
            for lane in run.lanes.values()
            if lane.budget.remaining is not None
            and lane.budget.limit is not None
            and lane.budget.reset_at is not None
        },
        by_workspace={lane.label: _figures(lane, elapsed) for lane in run.lanes.values()},
    )


def _figures(lane: Lane, elapsed: float) -> WorkspaceFigures:
    """One lane's counters and quota window now."""
    st, b = lane.stats, lane.budget
    return WorkspaceFigures(
        name=lane.name,
        counts={s.value: st.counts.get(s.value, 0) for s in Status},
        requests=st.requests,
        retries=st.retries,
        http_429=st.http_429,
        http_by_class=dict(st.http_by_class),
        rows_per_s=round(rows_sent(st.counts) / elapsed, 1) if elapsed > 0 else None,
        quota_limit=b.limit,
        quota_remaining=b.remaining,
        quota_reset_at=b.reset_at,
    )


async def watch(run: Run, observer: RunObserver) -> None:
    """Feed one observer a snapshot of ``run`` every ``observer.interval`` seconds."""
    while True:
        await asyncio.sleep(observer.interval)
        try:
            observer.update(snapshot(run))
        except Exception as exc:  # a display or metrics failure must not stop the run
            log.warning(
                "observer_failed",
                observer=type(observer).__name__,
                error=f"{type(exc).__name__}: {exc}",
            )


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
