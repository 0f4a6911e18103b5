"""A lane: one workspace's share of a run, isolated from the others.

Each workspace has its own client (key and base URL), quota budget, pace, circuit
breaker, queue and workers, so that one workspace's refused key, spent quota or outage
does not slow the others: their rows keep flowing through their own lanes.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from provisioner._braze.breaker import Breaker
from provisioner._braze.pacing import Pacer, Spreader
from provisioner._braze.quota import QuotaBudget, RateLimit
from provisioner._braze.sender import Sender
from provisioner._config.settings import Settings
from provisioner._config.workspaces import WorkspaceSettings
from provisioner._core.identity import RowKey
from provisioner._core.logs import get_logger
from provisioner._core.models import BUFFER_BYTES, Row, row_bytes
from provisioner._core.times import iso
from provisioner._core.vocab import DeferReason
from provisioner._outputs.summary import WorkspaceStats
from provisioner._state.interface import RunStore
from provisioner.errors import HostUnreachable

log = get_logger(__name__)
#: A host refusing or unresolvable for this long (the breaker's first probe) with nothing
#: ever answering is a wrong base URL, not a server starting late.
UNREACHABLE_GRACE = 1.0


@dataclass(frozen=True, slots=True)
class Job:
    """A valid row on its way to Braze."""

    row: Row
    key: RowKey
    send_id: str | None  # the send_id requested (the row's, or derived); None: Braze picks


class JobQueue(asyncio.Queue[Job | None]):
    """A lane's queue, bounded by jobs and by the bytes their rows hold (``BUFFER_BYTES``,
    ``models.row_bytes``): a put waits while either is reached, so wide rows queue a few
    at a time. One job always fits, however large. Sizes are reckoned per job sent, where
    a request costs far more than counting a row's columns."""

    def __init__(self, maxsize: int, max_bytes: int = BUFFER_BYTES) -> None:
        super().__init__(maxsize)
        self.max_bytes = max_bytes
        #: The bytes the queued jobs' rows hold (approximately).
        self.bytes = 0
        self._sizes: deque[int] = deque()

    def widen(self, maxsize: int) -> None:
        """Hold up to ``maxsize`` jobs from now on (never fewer than before; the bytes'
        bound stays). Before anything is queued: no put is waiting to be woken."""
        # asyncio.Queue keeps its bound in _maxsize (maxsize is a read-only property).
        self._maxsize: int = max(self.maxsize, maxsize)

    def full(self) -> bool:
        """Full by count, or by bytes once anything is queued."""
        return super().full() or (self.bytes >= self.max_bytes and not self.empty())

    def _put(self, item: Job | None) -> None:
        size = 0 if item is None else row_bytes(item.row.columns)
        self._sizes.append(size)
        self.bytes += size
        super()._put(item)

    def _get(self) -> Job | None:
        self.bytes -= self._sizes.popleft()
        return super()._get()


class QuotaGate(Protocol):
    """A quota shared with other processes (``group_quota.SharedQuota``): a unit per request."""

    async def admit(self, budget: QuotaBudget) -> bool: ...
    async def spend(self, window: float | None, budget: QuotaBudget) -> bool: ...
    async def landed(self, window: float, rate_limit: RateLimit | None) -> None: ...
    def unused(self, window: float | None, *, sent: bool = False) -> None: ...


class Lane:
    """One workspace's client, budget, pace, breaker, queue and stop state."""

    def __init__(
        self,
        ws: WorkspaceSettings,
        settings: Settings,
        client: Sender,
        *,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        # ``clock`` and ``sleep`` are for tests (``provisioner.testing.FakeClock``): one
        # clock for the quota window (epoch time) and the breaker (monotonic by default).
        self.name = ws.name
        self.label = ws.api_key.label  # the store's and the logs' name for it: not the key
        self.client = client
        self.concurrency = ws.concurrency or settings.concurrency
        self.pacer = Pacer(ws.rate or settings.rate)
        self.budget = QuotaBudget(
            default_limit=settings.default_quota,
            default_window=settings.default_window,
            cap=ws.quota if ws.quota is not None else settings.quota,
            max_wait=settings.max_wait,
            tail=self.concurrency,
            clock=clock or time.time,
            sleep=sleep,
        )
        self.breaker = Breaker(
            workspace=self.label,
            max_wait=settings.max_wait,
            clock=clock or time.monotonic,
            sleep=sleep,
        )
        self.spreader = (
            Spreader(self.budget, settings.pace_span, clock=clock or time.time, sleep=sleep)
            if settings.pace == "even"
            else None
        )
        self.queue: asyncio.Queue[Job | None] = JobQueue(maxsize=self.concurrency * 4)
        #: Set for a group's worker: the window's units are reserved in the database too.
        self.gate: QuotaGate | None = None
        self.stop_reason: str | None = None
        self.stop_exit: int | None = None
        self.stop_message: str | None = None
        self.deferred_rows = 0
        #: This workspace's rows and requests (the run's totals are in ``Run.stats``).
        self.stats = WorkspaceStats()
        self._spent_recorded = 0
        # A wrong base URL (typo, closed port, https to an http port) is a configuration
        # error, not an outage: told apart by "nothing ever answered, and every failure
        # was one that only a wrong host gives", for as many attempts as one row may make.
        self.answered = False
        self._unreachable_after = min(self.breaker.threshold, settings.retry_attempts)
        self._unreachable_count = 0
        self._other_failure = False
        self._first_unreachable: float | None = None
        self._last_unreachable: HostUnreachable | None = None

    def stop(self, reason: str, exit_code: int | None = None, message: str | None = None) -> None:
        """Stop this workspace only; its remaining rows are deferred with ``reason``;
        ``message`` (what went wrong and the fix) goes to the summary."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self.stop_exit = exit_code
            self.stop_message = message
            log.warning("workspace_stopping", workspace=self.label, name=self.name, reason=reason)

    def unreachable(self, exc: BaseException | None, *, final: bool = False) -> str | None:
        """The stop message when the base URL looks wrong, else None: nothing answered in
        this run and every failure was one only a wrong host gives. After a failed request
        (``exc``), that takes enough attempts over at least UNREACHABLE_GRACE seconds (a
        server starting late is not wrong); ``final`` (a row out of retries, the breaker
        giving up) asks about the failures so far, ``exc`` being the last."""
        if self.answered:
            return None  # answers were seen: from now on a failure is an outage
        now = time.monotonic()
        if not final:
            if not isinstance(exc, HostUnreachable):
                self._other_failure = True
                return None
            self._unreachable_count += 1
            self._last_unreachable = exc
            if self._first_unreachable is None:
                self._first_unreachable = now
        last = self._last_unreachable
        if self._other_failure or last is None or self._first_unreachable is None:
            return None
        if not final and (
            self._unreachable_count < self._unreachable_after
            or now - self._first_unreachable < UNREACHABLE_GRACE
        ):
            return None
        return (
            f"{last.host} could not be reached, {last.error}: {self._unreachable_count} "
            "attempts failed and it never answered in this run; this is a configuration "
            "error, not an outage: check base_url (host name, port, https) and the network"
        )

    def interrupt(self, reason: str) -> None:
        """Wake every wait of this lane (quota pause, even pace, outage) so that a signal
        takes effect at once; the lane's remaining rows are deferred with ``reason``."""
        self.budget.interrupt(reason)
        # Workers blocked on the budget's condition need a notify, which needs its lock.
        self._wakeup = asyncio.ensure_future(self.budget.defer(reason))
        self.breaker.interrupt(reason)
        if self.spreader is not None:
            self.spreader.interrupt(reason)

    def deferral_reason(self) -> str | None:
        """Why this lane's rows are deferred now, or None while it is sending."""
        if self.stop_reason is not None:
            return self.stop_reason
        # Asked before every request: no tuple to loop over (an exception is always true).
        d = self.budget.deferred or self.breaker.deferred
        return None if d is None else d.reason

    def seed_quota(self, store: RunStore) -> None:
        """Start from what earlier runs learned of the current window (durable budget)."""
        window = store.quota_window(self.label, time.time())
        if window is not None:
            self.budget.seed(window.reset_at, window.limit, window.remaining, window.spent)
            self._spent_recorded = self.budget.spent

    def save_quota(self, store: RunStore) -> None:
        """Persist the current window's figures (read by the next run and by status)."""
        b = self.budget
        if b.known and b.reset_at is not None and b.limit is not None and b.remaining is not None:
            delta = max(0, b.spent - self._spent_recorded)
            store.record_quota(self.label, b.reset_at, b.limit, b.remaining, delta)
            self._spent_recorded = b.spent

    def windows_needed(self) -> int | None:
        """How many quota windows the deferred rows need (for the summary's forecast)."""
        per_window = self.budget.cap or self.budget.limit or self.budget.default_limit
        if not self.deferred_rows or not per_window:
            return None
        if self.deferral_reason() not in (DeferReason.QUOTA, DeferReason.RATE_LIMITED):
            return None  # a refused key, an outage or a signal: more windows would not help
        return math.ceil(self.deferred_rows / per_window)

    def summary(self) -> dict[str, object]:
        """The lane's figures for summary.json."""
        b = self.budget
        return {
            "workspace": self.label,
            "name": self.name,
            "limit": b.limit,
            "remaining": b.remaining,
            "reset_at": iso(b.reset_at) if b.reset_at else None,
            "spent_this_window": b.spent,
            "cap": b.cap,
            "http_429": b.http_429,
            "deferred_until": iso(b.deferred.resume_at)
            if b.deferred is not None and b.deferred.resume_at
            else None,
            "stopped": self.deferral_reason(),
            "stop_message": self.stop_message or self.breaker.outage_message(),
            "deferred_rows": self.deferred_rows,
            "windows_needed": self.windows_needed(),
            **self._plan(),
            "breaker_opened": self.breaker.opened,
        }

    def _plan(self) -> dict[str, object]:
        """For deferred rows that more windows will take: when the last is expected to be
        created at the quota per window (``plan.py``)."""
        from provisioner._core.times import iso
        from provisioner._pipeline.plan import finishes_at

        if self.windows_needed() is None:
            return {}
        b = self.budget
        per_window = b.cap or b.limit or b.default_limit
        end = finishes_at(
            self.deferred_rows, per_window, b.default_window, time.time(), b.remaining, b.reset_at
        )
        return {"quota_per_window": per_window, "finishes_at": iso(end)}
