"""Run statistics in constant memory: counts, requests, latency percentiles, the summary.

Latencies go into a log-bucketed histogram (1% wide buckets) instead of a list, so a
5-million-row run keeps a few kilobytes, and p50/p95/p99 are exact to within 1%.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field

from provisioner._core.models import Outcome, Status
from provisioner._core.times import iso

_GROWTH = math.log(1.01)
#: The class names of the usual statuses, formatted once rather than per response.
_CLASSES = {status: f"{status // 100}xx" for status in range(100, 600)}


class LatencyHistogram:
    """Latencies in milliseconds, bucketed logarithmically."""

    def __init__(self) -> None:
        self._buckets: Counter[int] = Counter()
        self.count = 0

    def add(self, ms: float) -> None:
        """Record one latency."""
        self._buckets[int(math.log(max(ms, 0.01) * 100.0) / _GROWTH)] += 1
        self.count += 1

    def percentile(self, q: float) -> float | None:
        """The q-th percentile (0-100), or None when nothing was recorded."""
        if not self.count:
            return None
        rank = max(1, math.ceil(self.count * q / 100.0))
        seen = 0
        for bucket in sorted(self._buckets):
            seen += self._buckets[bucket]
            if seen >= rank:
                return round(math.exp((bucket + 0.5) * _GROWTH) / 100.0, 1)
        return None  # pragma: no cover - rank <= count


@dataclass(slots=True)
class WorkspaceStats:
    """One workspace's share of a run's counters (kept next to the run's totals, so the
    metrics file can give each workspace its own figures)."""

    counts: Counter[str] = field(default_factory=Counter)
    #: rows whose request was sent (see ``RunStats.sent``)
    sent: int = 0
    requests: int = 0
    retries: int = 0
    http_429: int = 0
    http_by_class: Counter[str] = field(default_factory=Counter)

    def note_status(self, status: int) -> None:
        """Count one HTTP response by class (2xx, 4xx ...)."""
        self.http_by_class[_CLASSES.get(status) or f"{status // 100}xx"] += 1


@dataclass(slots=True)
class RunStats:
    """Mutable counters of one run (one event loop, so no locking)."""

    started_at: float = field(default_factory=time.time)
    started_mono: float = field(default_factory=time.monotonic)
    counts: Counter[str] = field(default_factory=Counter)
    #: Rows whose request was sent: created rows, and failed rows after at least one
    #: attempt. Invalid rows, rows the campaign check refused and in-doubt rows of an
    #: earlier run failed without a request; deferred, skipped and duplicate rows cost none.
    sent: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    deferred_reasons: Counter[str] = field(default_factory=Counter)
    http_by_class: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    retries: int = 0
    http_429: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    @property
    def rows_done(self) -> int:
        """Rows that have reached their final status."""
        return sum(self.counts.values())

    def note_status(self, status: int) -> None:
        """Count one HTTP response by class (2xx, 4xx ...)."""
        self.http_by_class[_CLASSES.get(status) or f"{status // 100}xx"] += 1

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.started_mono

    def summary(self, *, run_id: str, manifest: str, exit_code: int) -> dict[str, object]:
        """The summary.json document."""
        duration = self.elapsed()
        counts = {s.value: self.counts.get(s.value, 0) for s in Status}
        rows_total = sum(counts.values())
        return {
            "run_id": run_id,
            "manifest": manifest,
            "started_at": iso(self.started_at),
            "finished_at": iso(self.started_at + duration),
            "duration_s": round(duration, 3),
            "rows_total": rows_total,
            "counts": counts,
            "requests": self.requests,
            "retries": self.retries,
            "http_429": self.http_429,
            "http_by_class": dict(sorted(self.http_by_class.items())),
            "latency_ms": {
                "p50": self.latency.percentile(50),
                "p95": self.latency.percentile(95),
                "p99": self.latency.percentile(99),
            },
            "rows_per_s": round(self.sent / duration, 1) if duration > 0 else None,
            "errors": dict(self.errors.most_common()),
            "deferred_reasons": dict(self.deferred_reasons.most_common()),
            "exit_code": exit_code,
        }


def was_sent(outcome: Outcome) -> bool:
    """Whether a row's request was sent, so that it counts in rows_per_s: created, or
    failed after at least one attempt."""
    return outcome.status is Status.CREATED or (
        outcome.status is Status.FAILED and outcome.attempts > 0
    )
