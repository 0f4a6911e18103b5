"""The quota budget: the server's window, and the 429 pause.

``QuotaBudget`` follows the server's fixed-window quota (100 per UTC day by default). It
is a budget, not a pace (that is ``pacing.py``): it follows ``X-RateLimit-*`` on every
response, counts what is in flight, learns a window with one probe request before going
wide, pauses everything until the reset when the window is spent (or on a 429), and
decides to defer the rest when the reset is further away than ``max_wait``.
``sleep_unless`` is the interruptible sleep every wait of a run uses (quota pause, even
pace, the breaker's cool-down), so that a signal cuts them short.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from provisioner._core.logs import get_logger
from provisioner._core.models import MAX_RESET_AHEAD
from provisioner._core.vocab import DeferReason
from provisioner.errors import Deferred as Deferred  # its old home; defined in errors

log = get_logger(__name__)

# Extra seconds after a window's reset before probing it again, for clock skew.
RESET_MARGIN = 0.05
# How far a new window's reset may fall short of a whole window after the old one (the
# server's clock or rounding): less than that is the same window with a moved reset.
WINDOW_SLACK = 1.0
# How long to pause on a 429 that says neither when the window resets nor Retry-After.
UNKNOWN_RESET_PAUSE = 60.0


async def sleep_unless(
    sleep: Callable[[float], Awaitable[None]], delay: float, stop: asyncio.Event
) -> None:
    """Sleep ``delay`` seconds, or less if ``stop`` is set meanwhile (a SIGTERM must not
    wait out a quota pause of several minutes)."""
    if stop.is_set():
        return
    sleeper = asyncio.ensure_future(sleep(delay))
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
        stopper.cancel()


@dataclass(frozen=True, slots=True)
class RateLimit:
    """The ``X-RateLimit-*`` headers of one response (any of them may be missing)."""

    limit: int | None
    remaining: int | None
    reset: float | None

    @property
    def complete(self) -> bool:
        """All three headers present and sane."""
        return self.limit is not None and self.remaining is not None and self.reset is not None


class QuotaBudget:
    """The workspace's quota window, shared by all workers of a run.

    ``acquire`` before every request, then exactly one ``observe`` (or ``cancel``) after.
    """

    def __init__(
        self,
        *,
        default_limit: int = 100,
        default_window: int = 86400,
        cap: int | None = None,
        max_wait: float = 300.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        tail: int = 0,
    ) -> None:
        self.default_limit = default_limit
        self.default_window = default_window
        self.cap = cap
        self.max_wait = max_wait
        self.tail = tail
        self._clock = clock
        self._sleep = sleep
        self._cond = asyncio.Condition()
        self.known = False  # a response of the current window has been seen
        self.reset_at: float | None = None
        self.limit: int | None = None
        self.remaining: int | None = None  # lowest the server reported in this window
        self.spent = 0  # our creations in the current window
        #: The window's share of a group is spent (``exhaust``): ``remaining`` stays the
        #: server's figure, so that the next window's share is reckoned from it.
        self.exhausted = False
        self.in_flight = 0
        self.paused_until: float | None = None
        self._pause_started: float | None = None
        self._deferred: Deferred | None = None
        self.http_429 = 0
        self.headers_missing_logged = False
        self._reset_moved_logged = False
        self._stopping = asyncio.Event()
        # Workers waiting on the condition for room. While none waits and the lock is
        # free, acquire and observe decide without it: none of their critical sections
        # awaits, so on one event loop the lock only orders waiters, and taking it cost
        # ~1 us per request (four coroutines) on the hot path.
        self._waiting = 0

    # -- what may be sent ------------------------------------------------------------
    def _available(self) -> int:
        assert self.remaining is not None
        if self.exhausted:
            return 0
        room = self.remaining - self.in_flight
        if self.cap is not None:
            room = min(room, self.cap - self.spent - self.in_flight)
        return room

    def _roll_window_if_due(self, now: float) -> None:
        if self.reset_at is not None and now >= self.reset_at:
            # A new window: learn it with a single probe before going wide.
            self.known = False
            self.reset_at = None
            self.remaining = None
            self.spent = 0
            self.exhausted = False

    def _uncontended(self) -> bool:
        """Nobody waits for room and nobody holds the lock: a decision taken now without
        the lock is the one the lock would let through first. (No critical section here
        awaits while holding the lock, so nobody ever queues for the lock itself.)"""
        return not self._waiting and not self._cond.locked()

    def _take(self, now: float) -> bool:
        """Take a slot if one may be sent now, without waiting (the caller checked the
        deferral and the pause)."""
        self._roll_window_if_due(now)
        if not self.known:
            if self.in_flight == 0:
                self.in_flight += 1
                return True
        elif self._available() > 0 and (self.in_flight == 0 or (self.remaining or 0) > self.tail):
            # In the window's last `tail` requests, one at a time: another client may have
            # spent them, and only one request may then meet a 429.
            self.in_flight += 1
            return True
        return False

    async def acquire(self) -> None:
        """Wait until one more request may be sent; raise ``Deferred`` when it never may."""
        # The usual case: no deferral, no pause, nobody ahead, and room.
        fast = self._deferred is None and self.paused_until is None and self._uncontended()
        if fast and self._take(self._clock()):
            return
        async with self._cond:
            while True:
                if self._deferred is not None:
                    raise self._deferred
                now = self._clock()
                if self.paused_until is not None:
                    if now < self.paused_until:
                        await self._wait_pause(now)
                        continue
                    self.paused_until = None
                if self._take(now):
                    return
                if self.known and self.in_flight == 0:
                    # Spent and nothing pending that could give room back: wait for the reset.
                    assert self.reset_at is not None
                    self._pause(self.reset_at + RESET_MARGIN, "quota_spent")
                    continue
                self._waiting += 1
                try:
                    await self._cond.wait()
                finally:
                    self._waiting -= 1

    async def _wait_pause(self, now: float) -> None:
        """Sleep until the pause ends; the lock is released so observers can proceed."""
        assert self.paused_until is not None
        delay = self.paused_until - now
        self._cond.release()
        try:
            await sleep_unless(self._sleep, delay, self._stopping)
        finally:
            await self._cond.acquire()

    def _pause(self, until: float, why: str) -> None:
        """Pause all sending until ``until``, or defer if that is past ``max_wait``."""
        now = self._clock()
        started = self._pause_started if self._pause_started is not None else now
        if until - started > self.max_wait:
            self._deferred = Deferred(
                DeferReason.QUOTA if why == "quota_spent" else DeferReason.RATE_LIMITED, until
            )
            log.warning(
                "quota_deferred",
                reason=self._deferred.reason,
                resume_at=until,
                wait_s=round(until - now, 1),
                max_wait_s=self.max_wait,
            )
            self._notify()
            return
        self._pause_started = started
        if self.paused_until is None or until > self.paused_until:
            self.paused_until = until
            log.info("rate_limit_pause", reason=why, until=until, wait_s=round(until - now, 2))
        self._notify()

    def _notify(self) -> None:
        """Wake the workers waiting for room; with none waiting the lock may not be held
        (``observe``'s fast path), and there is nobody to wake."""
        if self._waiting:
            self._cond.notify_all()

    # -- what the server said ---------------------------------------------------------
    async def observe(
        self,
        rate_limit: RateLimit | None,
        *,
        created: bool,
        rate_limited: bool = False,
        retry_after: float | None = None,
    ) -> None:
        """Account one finished request with the headers of its response (None if none)."""
        if self._uncontended():
            # Nobody to wake, and the accounting never awaits: no lock needed.
            self._account(rate_limit, created, rate_limited, retry_after)
            return
        async with self._cond:
            self._account(rate_limit, created, rate_limited, retry_after)
            self._cond.notify_all()

    def _account(
        self,
        rate_limit: RateLimit | None,
        created: bool,
        rate_limited: bool,
        retry_after: float | None,
    ) -> None:
        """``observe``'s bookkeeping; wakes waiters only through ``_notify``."""
        self.in_flight -= 1
        now = self._clock()
        self._roll_window_if_due(now)
        rate_limit, retry_after = self._believable(rate_limit, retry_after, now)
        if rate_limit is not None and rate_limit.complete:
            self._observe_headers(rate_limit, now)
        else:
            self._observe_without_headers(now, created, rate_limit)
        if created:
            self.spent += 1
        if not rate_limited:
            self._pause_started = None  # the server answered: a pause chain is over
        else:
            self.http_429 += 1
            complete = rate_limit is not None and rate_limit.complete
            stale = complete and rate_limit is not None and (rate_limit.reset or 0) <= now
            until: float | None
            if stale:
                # The 429 was for a window that has closed since: nothing to wait for;
                # the next request probes the new window.
                until = now + retry_after if retry_after is not None else None
            else:
                if complete:
                    self.remaining = 0
                else:
                    # A 429 that does not say its window: after the pause, probe again.
                    self.known = False
                    self.reset_at = None
                    self.remaining = None
                if retry_after is not None:
                    until = now + retry_after
                elif self.reset_at is not None and self.reset_at > now:
                    until = self.reset_at + RESET_MARGIN
                else:
                    until = now + UNKNOWN_RESET_PAUSE
            if until is not None:
                self._pause(until, "http_429")

    def _believable(
        self, rl: RateLimit | None, retry_after: float | None, now: float
    ) -> tuple[RateLimit | None, float | None]:
        """The headers with a reset or wait beyond ``MAX_RESET_AHEAD`` taken as garbled:
        a reset of 1e30 would otherwise become the window (and a wait of years a pause)."""
        far = now + MAX_RESET_AHEAD
        if rl is not None and rl.reset is not None and not rl.reset <= far:
            log.warning("rate_limit_reset_absurd", reset=rl.reset, max_ahead_s=MAX_RESET_AHEAD)
            rl = RateLimit(rl.limit, rl.remaining, None)
        if retry_after is not None and not retry_after <= MAX_RESET_AHEAD:
            log.warning("retry_after_absurd", retry_after=retry_after)
            retry_after = None
        return rl, retry_after

    def _observe_headers(self, rl: RateLimit, now: float) -> None:
        assert rl.limit is not None
        assert rl.remaining is not None
        assert rl.reset is not None
        if rl.reset <= now:
            return  # a window that has already closed says nothing about this one
        if (
            not self.known
            or self.reset_at is None
            or self.remaining is None
            or rl.reset >= self.reset_at + max(self.default_window - WINDOW_SLACK, WINDOW_SLACK)
        ):
            # A window not known yet, or one that begins where the old one ended: only a
            # reset a whole window later is a new window. Otherwise a reset that slides
            # (now + 1 h) or jitters by a second would start the spent count over at every
            # answer, and --quota would not hold. (Our clock passing the reset is the
            # other way a window ends: _roll_window_if_due.)
            if self.known:
                self.spent = 0
            self.known = True
            self.exhausted = False
            self.reset_at = rl.reset
            self.limit = rl.limit
            self.remaining = rl.remaining
            log.debug("quota_window", limit=rl.limit, remaining=rl.remaining, reset=rl.reset)
            return
        # The same window, whichever way its reset moved: the server's Remaining only goes
        # down within a window, so the lowest is the latest and is obeyed, even when it
        # comes with an earlier reset; the latest reset is kept, so the window ends (and
        # the spent count starts over) no sooner than the server last said.
        self.remaining = min(self.remaining, rl.remaining)
        self.limit = rl.limit
        if rl.reset != self.reset_at:
            if not self._reset_moved_logged:
                self._reset_moved_logged = True
                log.info(
                    "rate_limit_reset_moved",
                    was=self.reset_at,
                    now_says=rl.reset,
                    hint="taken as the same window: the lowest Remaining and the latest "
                    "reset are kept",
                )
            self.reset_at = max(self.reset_at, rl.reset)

    def _observe_without_headers(self, now: float, created: bool, rl: RateLimit | None) -> None:
        if not self.headers_missing_logged:
            self.headers_missing_logged = True
            log.warning(
                "rate_limit_headers_missing",
                got=None if rl is None else str(rl),
                assumed_limit=self.default_limit,
                assumed_window_s=self.default_window,
            )
        if not self.known:
            window = self.default_window
            self.known = True
            self.reset_at = (math.floor(now / window) + 1) * window
            self.limit = self.default_limit
            self.remaining = self.default_limit
        if created and self.remaining is not None:
            self.remaining -= 1

    def seed(self, reset_at: float, limit: int, remaining: int, spent: int) -> None:
        """Start from a window an earlier run saw (the state store), if it is still open:
        a restart within the window neither bursts nor forgets what was spent."""
        now = self._clock()
        if not now < reset_at <= now + MAX_RESET_AHEAD:
            return  # closed, or a window no server meant (the store repairs those on open)
        self.known = True
        self.reset_at = reset_at
        self.limit = limit
        self.remaining = remaining
        self.spent = spent
        log.info(
            "quota_window_resumed", limit=limit, remaining=remaining, spent=spent, reset=reset_at
        )

    def exhaust(self) -> None:
        """No more room in this window although the server's figures leave some: a budget
        shared with other workers (``run --group``) is spent. The next ``acquire`` waits
        for the window's reset (or defers past ``max_wait``), as for a spent quota."""
        if self.known:
            self.exhausted = True

    async def settle_unknown(self) -> None:
        """Account a request whose fate is unknown (it may have created): count it as spent
        so the operator cap stays safe; the server's next headers correct the rest."""
        async with self._cond:
            self.in_flight -= 1
            self.spent += 1
            if self.remaining is not None:
                self.remaining -= 1
            self._cond.notify_all()

    async def cancel(self) -> None:
        """Account a request that was never sent (or whose fate says nothing of quota)."""
        async with self._cond:
            self.in_flight -= 1
            self._cond.notify_all()

    async def defer(self, reason: str) -> None:
        """Make every waiting and later ``acquire`` raise ``Deferred`` (e.g. key refused)."""
        self.interrupt(reason)
        async with self._cond:
            self._cond.notify_all()

    def interrupt(self, reason: str) -> None:
        """``defer`` for synchronous callers (a signal handler): also cuts a pause short."""
        if self._deferred is None:
            self._deferred = Deferred(reason, None)
        self._stopping.set()

    @property
    def deferred(self) -> Deferred | None:
        """Why the budget stopped, if it did."""
        return self._deferred
