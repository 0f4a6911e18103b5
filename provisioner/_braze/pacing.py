"""Pacing: how evenly requests go out, within what the quota budget allows.

- ``Pacer``: an even pace in requests per second (aiolimiter's leaky bucket). aiolimiter
  lets a full bucket through at once; a bucket of ``max_rate`` would double the rate in the
  first period (see docs/engineering-notes.md), so the bucket here holds ~10 ms of requests (at
  least one) and starts full, so there is no start-up burst at all.
- ``Spreader`` (``pace = "even"``): the quota left in the window spread evenly over the
  time left, instead of spent at the window's start.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

from aiolimiter import AsyncLimiter

from provisioner._braze.quota import QuotaBudget, sleep_unless
from provisioner._core.vocab import DeferReason
from provisioner.errors import Deferred


class Pacer:
    """An even pace of ``rate`` acquisitions per second, without aiolimiter's burst."""

    def __init__(self, rate: float) -> None:
        # A 1-token bucket cannot go faster than the loop's ~1 ms timer resolution (measured:
        # ~900/s whatever the rate), so the bucket holds 10 ms of tokens, at least one.
        self._burst = max(1, math.ceil(rate * 0.01))
        self._limiter = AsyncLimiter(self._burst, self._burst / rate)
        self._primed = False

    async def wait(self) -> None:
        """Wait for the next slot."""
        if not self._primed:
            # Fill the bucket but for one token: the first request goes at once, the rest
            # at the even pace, never in a burst.
            self._primed = True
            if self._burst > 1:
                await self._limiter.acquire(self._burst - 1)
        await self._limiter.acquire()


class Spreader:
    """``pace = "even"``: spread the quota left in the window evenly over time.

    Each request waits for its slot: the time left (until the window's reset, or the
    configured span if shorter) divided by the requests the budget still allows. Spending
    100 a day this way sends one request every ~15 minutes instead of 100 at midnight,
    which leaves room for other clients and spreads Braze's load. Before the window is
    known (the probe) there is nothing to spread.
    """

    def __init__(
        self,
        budget: QuotaBudget,
        span: float | None = None,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.budget = budget
        self.span = span
        self._clock = clock
        self._sleep = sleep
        self._lock = asyncio.Lock()
        self._last: float | None = None
        self._stopping = asyncio.Event()
        self.stop_reason: str | None = None

    def interval(self, now: float) -> float:
        """Seconds between requests now (0 while the window is unknown)."""
        b = self.budget
        if not b.known or b.reset_at is None or b.remaining is None:
            return 0.0
        horizon = max(0.0, b.reset_at - now)
        if self.span is not None:
            horizon = min(horizon, self.span)
        allowed = b.remaining if b.cap is None else min(b.remaining, b.cap - b.spent)
        return horizon / max(1, allowed)

    async def wait(self) -> None:
        """Wait for this request's slot; slots are handed out one at a time."""
        async with self._lock:
            now = self._clock()
            # The step is measured from the previous request, with the budget as it is now.
            slot = now if self._last is None else max(now, self._last + self.interval(now))
            if slot > now:
                await sleep_unless(self._sleep, slot - now, self._stopping)
                if self._stopping.is_set():
                    raise Deferred(self.stop_reason or DeferReason.INTERRUPTED, None)
            self._last = slot

    def interrupt(self, reason: str) -> None:
        """Cut a wait for a slot short (a signal, a refused key)."""
        self.stop_reason = reason
        self._stopping.set()
