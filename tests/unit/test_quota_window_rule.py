"""QuotaBudget's new-window rule (issue 18 item 5), on a fake clock: a window ends when our
clock passes its reset, or when an answer's reset is a whole window (less a second) past
the old one; any smaller move of the reset (jitter, a slide, a step back, Remaining back at
Limit) is the same window, whose spent count and lowest Remaining hold (README, "How quota
and errors are treated")."""

from __future__ import annotations

import asyncio

import pytest

from provisioner._braze.quota import WINDOW_SLACK, QuotaBudget, RateLimit
from provisioner.testing import FakeClock

WINDOW = 100
T0 = 1_000_000.0


def budget(clock: FakeClock, **kw: object) -> QuotaBudget:
    return QuotaBudget(
        clock=clock,
        sleep=clock.sleep,
        default_window=WINDOW,
        **kw,  # type: ignore[arg-type]
    )


async def send(b: QuotaBudget, remaining: int, reset: float, *, limit: int = 50) -> None:
    """One request that creates, answered with these headers."""
    await b.acquire()
    await b.observe(RateLimit(limit, remaining, reset), created=True)


async def test_a_reset_a_whole_window_later_is_a_new_window() -> None:
    """A reset at least default_window - 1 s past the old one starts the count over."""
    clock = FakeClock(T0)
    b = budget(clock)
    await send(b, 40, T0 + 10)
    await send(b, 39, T0 + 10)
    assert (b.spent, b.remaining) == (2, 39)
    await send(b, 49, T0 + 10 + WINDOW - WINDOW_SLACK)
    assert (b.spent, b.remaining, b.reset_at) == (1, 49, T0 + 10 + WINDOW - WINDOW_SLACK)


async def test_a_reset_just_short_of_a_window_later_is_the_same_window() -> None:
    """A reset that moves by less than a window (less the slack) keeps spent and Remaining."""
    clock = FakeClock(T0)
    b = budget(clock)
    await send(b, 40, T0 + 10)
    await send(b, 49, T0 + 10 + WINDOW - WINDOW_SLACK - 0.5)
    assert (b.spent, b.remaining) == (2, 40)
    assert b.reset_at == T0 + 10 + WINDOW - WINDOW_SLACK - 0.5  # the latest reset is kept


async def test_our_clock_passing_the_reset_ends_the_window_and_probes_again() -> None:
    """At the reset the count starts over and the next request is a lone probe."""
    clock = FakeClock(T0)
    b = budget(clock)
    await send(b, 40, T0 + 10)
    clock.now = T0 + 10
    await b.acquire()
    assert (b.known, b.spent, b.remaining) == (False, 0, None)
    second = asyncio.create_task(b.acquire())
    await asyncio.sleep(0.01)
    assert not second.done()  # one probe before going wide
    await b.observe(RateLimit(50, 49, T0 + 10 + WINDOW), created=True)
    await asyncio.wait_for(second, 1)
    assert (b.spent, b.remaining) == (1, 49)
    await b.observe(RateLimit(50, 48, T0 + 10 + WINDOW), created=True)


@pytest.mark.parametrize("delta", [-1.0, 1.0])
async def test_remaining_back_up_to_limit_with_a_reset_a_second_off_is_the_same_window(
    delta: float,
) -> None:
    """Remaining == Limit with a reset a second later or earlier does not start a window:
    the lowest Remaining and the spent count hold (the conservative reading: a late answer
    computed before the window's creations says the same, and believing it would let
    --quota be passed). Only the reset (or our clock) ends a window."""
    clock = FakeClock(T0)
    b = budget(clock, cap=5)
    for remaining in (45, 44, 43):
        await send(b, remaining, T0 + 10)
    await send(b, 50, T0 + 10 + delta)
    assert (b.spent, b.remaining, b.reset_at) == (4, 43, T0 + 10 + max(0.0, delta))


async def test_a_jittering_reset_keeps_the_spent_count_and_quota_holds() -> None:
    """Resets that jitter by +-1 s never start the count over: --quota 3 lets 3 through."""
    clock = FakeClock(T0)
    b = budget(clock, cap=3, max_wait=0)
    for remaining, jitter in ((49, 0.0), (48, 1.0), (47, -1.0)):
        await send(b, remaining, T0 + 10 + jitter)
    assert (b.spent, b.reset_at) == (3, T0 + 11)
    blocked = asyncio.create_task(b.acquire())
    await asyncio.sleep(0.01)
    assert blocked.done()  # past the cap: refused (deferred, max_wait 0), not sent
    assert b.in_flight == 0
    with pytest.raises(Exception, match="quota"):
        blocked.result()


async def test_a_sliding_reset_keeps_the_spent_count() -> None:
    """A reset that slides (now + 60 s at every answer) is the same window for ever."""
    clock = FakeClock(T0)
    b = budget(clock)
    for n in range(5):
        clock.now = T0 + 5 * n
        await send(b, 49 - n, clock.now + 60)
    assert (b.spent, b.remaining, b.reset_at) == (5, 45, T0 + 20 + 60)


async def test_a_backwards_reset_still_has_its_remaining_obeyed() -> None:
    """An earlier reset with a lower Remaining: the lower Remaining is obeyed, the latest
    reset kept; with Remaining 0 nothing more goes out."""
    clock = FakeClock(T0)
    b = budget(clock, max_wait=1000)
    await send(b, 2, T0 + 50)
    await send(b, 0, T0 + 40)
    assert (b.spent, b.remaining, b.reset_at) == (2, 0, T0 + 50)
    await b.acquire()  # the fake clock's sleep moves time on: returns after the pause
    assert clock.now >= T0 + 50  # the next request waited for the latest reset
    assert (b.known, b.spent) == (False, 0)  # a probe of the new window


async def test_a_higher_remaining_with_an_earlier_reset_does_not_raise_the_budget() -> None:
    """A step back of the reset with a higher Remaining (a stale answer) changes nothing."""
    clock = FakeClock(T0)
    b = budget(clock)
    await send(b, 5, T0 + 50)
    await send(b, 30, T0 + 49)
    assert (b.spent, b.remaining, b.reset_at) == (2, 5, T0 + 50)
