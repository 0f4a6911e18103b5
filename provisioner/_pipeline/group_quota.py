"""A group worker's share of a workspace's window (``run --group``): each lane's
``SharedQuota`` takes units from the window's row in the database before its requests
leave, so that the workers together never exceed what the server said remains, nor
--quota (the rows: ``_state/postgres_group_quota.py``).

Units go through two hands. ``admit`` (when the budget lets a request through, before
its pacing) takes a unit of this worker's *reservation*: ``units`` of the window's budget
taken at a time from the row every worker shares. ``spend`` (right before the request
leaves, after every wait) takes an *armed* unit: this worker marks a few of its reserved
units at a time as possibly spent, in its own row, fenced by its lease, ahead of need.
A request leaves only on an armed unit, so what a worker that dies leaves reserved but
unarmed (its pool, and the units of requests still waiting on the pacer) is provably
unspent: the next reservation in the window returns it to everyone once its lease has
expired. Its armed units stay counted as spent.
"""

from __future__ import annotations

import asyncio
import time

from provisioner._braze.quota import QuotaBudget, RateLimit
from provisioner._core.logs import get_logger
from provisioner._state.postgres_group import GroupHandle

log = get_logger(__name__)

#: Units a lane reserves at a time (at most its concurrency), refilled when half are
#: admitted, and arms half as many at a time, topped up when fewer are left: a round
#: trip per RESERVE_UNITS / 2 requests or so (both in one when both are due). A worker
#: killed loses for that window the armed units it had not sent: RESERVE_UNITS - 1 at
#: most (plus any a 429 or a refused connection had just handed back); the rest of what
#: it held comes back to the others once its lease expires.
RESERVE_UNITS = 16
#: No request leaves in a window's last quarter second (a tenth of a short window): it
#: could arrive after the reset. The workers wait for the new window instead.
END_GUARD_S = 0.25


class SharedQuota:
    """A lane's share of its workspace's window budget, reserved in the database."""

    def __init__(self, group: GroupHandle, workspace: str, units: int) -> None:
        self.group = group
        self.workspace = workspace
        self.units = max(1, units)
        self.arm = max(1, self.units // 2)
        self._key: float | None = None
        # For the window ``_key``, what this lane holds of it:
        self._pool = 0  # units reserved and not admitted
        self._reserved = 0  # units reserved (granted, less what went back)
        self._armed = 0  # ... of which armed (may be spent)
        self._sent = 0  # ... of which spent by a request that left
        self._probes = 0  # requests sent to learn a window, not yet counted in the database
        self._lock = asyncio.Lock()
        self._refill: asyncio.Task[None] | None = None
        self._spent: float | None = None  # the window the workers have spent together
        self.reservations = 0
        self.reclaimed = 0  # units of dead workers this lane's reservations returned

    async def admit(self, budget: QuotaBudget) -> bool:
        """A unit for one request the budget let through; False: the workers together
        have spent the window (the caller waits for the next one, as for a spent quota)."""
        if not budget.known:
            row = await asyncio.to_thread(self.group.quota.current, self.workspace, time.time())
            if row is not None and not budget.known:
                reset_at, limit, left = row
                budget.seed(reset_at, limit, max(0, left), budget.spent)
            if not budget.known:
                self._probes += 1  # the probe that learns the window
                return True
        if budget.reset_at != self._key:
            # A closed window's units are void.
            self._key = budget.reset_at
            self._pool = self._reserved = self._armed = self._sent = 0
        assert self._key is not None
        if self._key - time.time() < min(END_GUARD_S, budget.default_window / 10):
            # A request sent now could reach the server after the reset and spend the next
            # window's quota, which the workers may have handed out in full by then.
            return False
        if self._pool > 0:
            self._pool -= 1
            self._ahead(budget)
            return True
        async with self._lock:
            if self._pool == 0 and self._spent != self._key:
                await self._round_trip(budget, reserve=True)
            if self._pool == 0:
                return False
            self._pool -= 1
            return True

    async def spend(self, window: float | None, budget: QuotaBudget) -> bool:
        """Right before the request of a unit of ``window`` leaves: an armed unit for it;
        False if none can be armed (this worker's lease lapsed, or its reservation was
        taken back): the request must not leave."""
        if window is None or window != self._key:
            # A probe's unit (counted as taken when its window is known), or one of a window
            # that has closed since: nobody reserves in a closed window, so nothing of it is
            # ever reclaimed, and its units stay counted.
            return True
        if self._sent < self._armed:
            self._sent += 1
            self._ahead(budget)
            return True
        async with self._lock:
            if self._sent >= self._armed and window == self._key:
                await self._round_trip(budget, reserve=self._pool < self.units // 2)
            if window != self._key:
                return True
            if self._sent >= self._armed:
                return False
            self._sent += 1
            return True

    def _ahead(self, budget: QuotaBudget) -> None:
        """Refill ahead, so that requests do not queue behind a round trip: reserve when
        half the reserved units are admitted, arm when fewer than ``arm`` are armed."""
        if self._refill is not None:
            return
        reserve = self._pool < self.units // 2 and self._spent != self._key
        if reserve or (self._armed - self._sent < self.arm and self._reserved > self._armed):
            self._refill = asyncio.create_task(self._top_up(budget))

    async def _top_up(self, budget: QuotaBudget) -> None:
        try:
            async with self._lock:
                reserve = self._pool < self.units // 2 and self._spent != self._key
                if reserve or self._armed - self._sent < self.arm:
                    await self._round_trip(budget, reserve=reserve)
        finally:
            self._refill = None

    async def _round_trip(self, budget: QuotaBudget, *, reserve: bool) -> None:
        """(under the lock) ``units`` more reserved when ``reserve``, and ``arm`` more
        armed when fewer than that are armed and unspent."""
        key = self._key
        assert key is not None
        assert budget.limit is not None
        remaining = budget.remaining if budget.remaining is not None else budget.limit
        ceiling = remaining + self._probes
        if budget.cap is not None:
            ceiling = min(ceiling, budget.cap - max(0, budget.spent - self._probes))
        probes, self._probes = self._probes, 0
        units = self.units if reserve and self._spent != key else 0
        arm = self.arm if self._armed - self._sent < self.arm else 0
        granted, armed, back = await asyncio.to_thread(
            self.group.quota.top_up,
            self.workspace, key, budget.limit, ceiling, probes, units, arm,
        )  # fmt: skip
        self.reservations += 1
        if back:
            self.reclaimed += back
            log.info("quota_reclaimed", workspace=self.workspace, window=key, units=back)
        if key != self._key:
            return  # the window closed meanwhile: what came is void (armed: counted spent)
        self._pool += granted
        self._reserved += granted
        self._armed += armed
        if units and not granted:
            self._spent = key  # no more reservations for this window

    async def landed(self, window: float, rate_limit: RateLimit | None) -> None:
        """After an answer: a request whose unit came from ``window`` but that the server
        counted in a later window (it arrived after the reset) is charged to that window's
        row too, so the later window's budget still holds what the server has left."""
        rl = rate_limit
        if rl is None or not rl.complete or rl.reset is None or rl.reset <= window + 0.5:
            return
        if rl.reset <= time.time() or rl.limit is None or rl.remaining is None:
            return
        await asyncio.to_thread(
            self.group.quota.top_up,
            self.workspace, rl.reset, rl.limit, rl.remaining + 1, 1, 0, 0,
        )  # fmt: skip

    def unused(self, window: float | None, *, sent: bool = False) -> None:
        """A unit of ``window`` admitted for a request that was never sent, or ``sent``
        but that spent nothing (a 429, a refused connection): back to the pool (and its
        armed unit reused), unless it was a probe's (None) or the window closed."""
        if window is not None and window == self._key:
            self._pool += 1
            if sent and self._sent > 0:
                self._sent -= 1

    def take_pool(self) -> tuple[float | None, int, int]:
        """The units held and not admitted (nothing of the lane's in flight): how many are
        armed and unspent, how many unarmed, and their window; the lane holds none after."""
        armed = min(self._pool, max(0, self._armed - self._sent))
        spare = self._pool - armed
        self._reserved -= self._pool
        self._armed -= armed
        self._pool = 0
        return self._key, armed, spare

    def give_back(self, key: float | None, armed: int, spare: int) -> None:
        """Return units taken with ``take_pool`` (blocking: a round trip)."""
        if (armed or spare) and key is not None and key > time.time():
            self.group.quota.give_back(self.workspace, key, armed, spare)
