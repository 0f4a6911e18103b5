"""The circuit breaker on a fake clock: opens, probes alone, closes, defers an outage."""

from __future__ import annotations

import asyncio

import pytest

from provisioner._braze.breaker import Breaker
from provisioner._braze.quota import Deferred
from provisioner.testing import FakeClock


def breaker(clock: FakeClock, **kw: float) -> Breaker:
    return Breaker(workspace="ws-test", threshold=3, clock=clock, sleep=clock.sleep, **kw)


async def test_closed_breaker_lets_everything_through() -> None:
    """Below the threshold of consecutive failures nothing waits."""
    clock = FakeClock(100.0)
    b = breaker(clock)
    b.failure()
    b.failure()
    b.success()
    b.failure()
    assert await b.allow() is False
    assert not b.is_open


async def test_opens_after_threshold_then_one_probe() -> None:
    """After 3 consecutive failures requests wait; after the cool-down one probe goes."""
    clock = FakeClock(100.0)
    # The fake clock races ahead while the second caller waits: keep the outage limit out
    # of reach so that only the probe's verdict can release it.
    b = breaker(clock, max_wait=1e9)
    for _ in range(3):
        b.failure()
    assert b.is_open
    first = asyncio.create_task(b.allow())
    second = asyncio.create_task(b.allow())
    await asyncio.sleep(0.01)
    assert first.done()
    assert first.result() is True
    assert not second.done()  # everyone else waits for the probe's verdict
    b.success(probe=True)
    assert await asyncio.wait_for(second, 1) is False
    assert not b.is_open


async def test_passing_says_when_allow_need_not_be_awaited() -> None:
    """``passing`` is true exactly while allow() would let a request through as no probe:
    false while open and once deferred (the runner's fast path relies on it)."""
    clock = FakeClock(100.0)
    b = breaker(clock, max_wait=1e9)
    assert b.passing
    for _ in range(3):
        b.failure()
    assert not b.passing
    assert await b.allow() is True  # after the cool-down: the probe
    b.success(probe=True)
    assert b.passing
    b.success()  # a closed breaker's success changes nothing
    assert b.passing
    assert b.failures == 0
    b.interrupt("interrupted")
    assert not b.passing
    with pytest.raises(Deferred):
        await b.allow()


async def test_failed_probe_doubles_the_cool_down() -> None:
    """A failed probe re-opens the breaker for twice as long."""
    clock = FakeClock(100.0)
    b = breaker(clock)
    for _ in range(3):
        b.failure()
    assert await b.allow() is True
    b.failure(probe=True)
    assert b.cool_down == 2.0
    start = clock.now
    assert await b.allow() is True
    assert clock.now - start == pytest.approx(2.0)


async def test_outage_longer_than_max_wait_defers() -> None:
    """When the breaker has been open longer than max_wait, allow() raises Deferred."""
    clock = FakeClock(100.0)
    b = breaker(clock, max_wait=5.0)
    for _ in range(3):
        b.failure()

    async def probe_until_deferred() -> None:
        while True:
            assert await b.allow() is True
            b.failure(probe=True)

    with pytest.raises(Deferred) as info:
        await probe_until_deferred()
    assert info.value.reason == "outage"
    with pytest.raises(Deferred):
        await b.allow()


async def test_outage_is_deferred_at_max_wait_not_at_the_next_probe() -> None:
    """With a cool-down longer than max_wait, the waiters give up at max_wait."""
    clock = FakeClock(100.0)
    b = breaker(clock, max_wait=0.5)
    for _ in range(3):
        b.failure()
    start = clock.now
    with pytest.raises(Deferred) as info:
        await b.allow()
    assert info.value.reason == "outage"
    assert clock.now - start == pytest.approx(0.5)
