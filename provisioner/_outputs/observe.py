"""Watching a run: point-in-time snapshots and the observers that show or export them.

``watch`` samples a run (``snapshot``) on a timer for each ``RunObserver`` (the progress
log events, the terminal display, the Prometheus metrics file), and the run ends with a
final one. Observers only read snapshots: they cannot slow or change the pipeline.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

from provisioner._core.logs import get_logger
from provisioner._core.models import Status
from provisioner._core.times import iso

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
    rows_per_s: float | None  # rows sent (created, or failed after a request) per second of the run
    fraction_read: float | None  # how far through the manifest by bytes (None for stdin)
    eta_s: float | None  # None here: each observer's ``Eta`` measures it over time
    quota_limit: int | None
    quota_remaining: int | None
    quota_reset_at: float | None  # epoch seconds
    paused_until: float | None  # epoch seconds, while waiting for a quota reset
    finished: bool = False
    exit_code: int | None = None
    errors: dict[str, int] = field(default_factory=dict)
    #: Every workspace's window: label -> (remaining, limit, reset epoch), when known.
    quotas: dict[str, tuple[int, int, float]] = field(default_factory=dict)
    #: The manifest's rows, once the reader has reached its end (None until then).
    rows_total: int | None = None
    #: Rows done / rows total: exact once the total is known, before that estimated from
    #: the bytes read (None for standard input until its end).
    fraction_done: float | None = None
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
    total = run.rows_read if run.read_to_end else None
    fraction = fraction_done(done, run.rows_read, total, read)
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
        rows_per_s=round(run.stats.sent / elapsed, 1) if elapsed > 0 else None,
        fraction_read=read,
        eta_s=None,
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
        rows_total=total,
        fraction_done=fraction,
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
        rows_per_s=round(st.sent / elapsed, 1) if elapsed > 0 else None,
        quota_limit=b.limit,
        quota_remaining=b.remaining,
        quota_reset_at=b.reset_at,
    )


def fraction_done(
    done: int, rows_read: int, rows_total: int | None, read: float | None
) -> float | None:
    """Rows done as a share of the manifest's rows: ``done / rows_total`` once the total is
    known; before that, the share of the file read (``read``, by bytes) scaled by the share
    of the rows read that are done, since the reader runs ahead of the workers (a whole
    small file is read at once). None when neither is known (standard input)."""
    if rows_total is not None:
        return min(1.0, done / rows_total) if rows_total else 1.0
    if read is None:
        return None
    return min(1.0, read * done / max(1, rows_read))


class Eta:
    """The time left, from the rate of rows *done* (not rows read) over the last
    ``window`` seconds of run time, for one observer's successive snapshots.

    Rows left are the total's (exact once the manifest is read to its end, else estimated
    from the bytes read) minus rows done. A quota pause is no slow rate: while a snapshot
    says the run is paused there is no ETA (the display says what it waits for), and the
    measure starts again after it, so the pause's length never stretches the estimate.
    """

    def __init__(self, window: float = 60.0) -> None:
        self.window = window
        # The run's start is the first sample: (run time, rows done).
        self._samples: deque[tuple[float, int]] = deque([(0.0, 0)])

    def estimate(self, s: Snapshot, now: float) -> Snapshot:
        """``s`` with ``eta_s`` set (None when paused, finished or not yet measurable);
        ``now`` (epoch seconds) tells whether its pause is still on."""
        if s.finished:
            return replace(s, eta_s=0.0)
        if waiting(s, now):
            self._samples.clear()
            return replace(s, eta_s=None)
        samples = self._samples
        if samples and s.elapsed_s <= samples[-1][0]:
            samples.pop()  # the same instant again (two observers, a test): the latest wins
        samples.append((s.elapsed_s, s.rows_done))
        while len(samples) > 2 and s.elapsed_s - samples[1][0] >= self.window:
            samples.popleft()
        (t0, done0), (t1, done1) = samples[0], samples[-1]
        f = s.fraction_done
        if t1 <= t0 or done1 <= done0 or not f:
            return replace(s, eta_s=None)
        rate = (done1 - done0) / (t1 - t0)
        left = (
            s.rows_total - s.rows_done
            if s.rows_total is not None
            else s.rows_done / f - s.rows_done
        )
        return replace(s, eta_s=max(0.0, left) / rate)


def waiting(s: Snapshot, now: float) -> bool:
    """Whether the run is paused for a quota reset at ``now`` (epoch seconds)."""
    return not s.finished and s.paused_until is not None and s.paused_until > now


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

    def __init__(self, interval: float, clock: Callable[[], float] = time.time) -> None:
        self.interval = interval
        self._clock = clock
        self._eta = Eta()

    def update(self, snapshot: Snapshot) -> None:
        """Log one progress event."""
        now = self._clock()
        s = self._eta.estimate(snapshot, now)
        log.info(
            "progress",
            rows_done=s.rows_done,
            rows_total=s.rows_total,
            fraction_done=round(s.fraction_done, 4) if s.fraction_done is not None else None,
            fraction_read=round(s.fraction_read, 4) if s.fraction_read is not None else None,
            eta_s=round(s.eta_s) if s.eta_s is not None else None,
            waiting_for_quota=waiting(s, now),
            counts={k: v for k, v in s.counts.items() if v},
            rows_per_s=s.rows_per_s,
            requests=s.requests,
            quota_remaining=s.quota_remaining,
            paused_until=iso(s.paused_until) if s.paused_until else None,
        )

    def close(self, snapshot: Snapshot) -> None:
        """Nothing: ``run_finished`` is logged by the runner."""
