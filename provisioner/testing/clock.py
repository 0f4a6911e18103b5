"""One fake clock for every test that would otherwise wait or read the wall clock."""

from __future__ import annotations

import asyncio


class FakeClock:
    """Time that moves only when told to, or when a sleeper wakes (to its target time).

    Call it for the time (``clock()``, epoch or monotonic alike: it is one number), pass
    ``clock.sleep`` where an ``asyncio.sleep`` is injectable: a sleep yields to the loop
    once, then jumps the clock to its end, so a 10-minute quota pause takes no wall time
    and no test asserts on elapsed real time. ``slept`` lists every delay asked for.
    """

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``, as if that much time passed."""
        self.now += seconds

    async def sleep(self, delay: float) -> None:
        """Let the loop run once, then be ``delay`` seconds later (never earlier)."""
        target = self.now + max(0.0, delay)
        self.slept.append(delay)
        await asyncio.sleep(0)
        self.now = max(self.now, target)
