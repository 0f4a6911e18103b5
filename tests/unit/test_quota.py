"""QuotaBudget, Pacer and Spreader on a fake clock: no wall-clock assertions."""

from __future__ import annotations

import asyncio

import pytest

from provisioner._braze.pacing import Pacer, Spreader
from provisioner._braze.quota import Deferred, QuotaBudget, RateLimit
from provisioner.testing import FakeClock


def budget(clock: FakeClock, **kw: object) -> QuotaBudget:
    return QuotaBudget(clock=clock, sleep=clock.sleep, **kw)  # type: ignore[arg-type]


async def test_first_request_is_a_lone_probe() -> None:
    """Before any response, only one request may be in flight (to learn the window)."""
    clock = FakeClock()
    b = budget(clock)
    await b.acquire()
    second = asyncio.create_task(b.acquire())
    await asyncio.sleep(0.01)
    assert not second.done()
    await b.observe(RateLimit(100, 99, clock.now + 3600), created=True)
    await asyncio.wait_for(second, 1)
    assert b.in_flight == 1


async def test_never_sends_more_than_server_remaining_minus_in_flight() -> None:
    """With Remaining=3 after the probe, at most 3 more requests are let through."""
    clock = FakeClock()
    b = budget(clock, max_wait=0)
    await b.acquire()
    await b.observe(RateLimit(4, 3, clock.now + 10_000), created=True)
    for _ in range(3):
        await b.acquire()
    blocked = asyncio.create_task(b.acquire())
    await asyncio.sleep(0.01)
    assert not blocked.done()
    blocked.cancel()


async def test_the_window_s_last_tail_requests_go_one_at_a_time() -> None:
    """With Remaining at or below ``tail``, a second request waits for the first's answer
    (acquire's lock-free path must not let it through), and that answer wakes it."""
    clock = FakeClock()
    b = budget(clock, tail=3)
    reset = clock.now + 10_000
    await b.acquire()
    await b.observe(RateLimit(100, 3, reset), created=True)
    await b.acquire()
    second = asyncio.create_task(b.acquire())
    await asyncio.sleep(0.01)
    assert not second.done()
    await b.observe(RateLimit(100, 2, reset), created=True)
    await asyncio.wait_for(second, 1)
    assert (b.in_flight, b.remaining, b.spent) == (1, 2, 2)


async def test_an_answer_wakes_every_worker_waiting_for_room() -> None:
    """Workers waiting for room are woken by the answers that make it, each taking one
    slot, and no more go than the window allows."""
    clock = FakeClock()
    b = budget(clock, max_wait=0)
    reset = clock.now + 10_000
    await b.acquire()
    await b.observe(RateLimit(10, 4, reset), created=True)
    for _ in range(4):
        await b.acquire()  # the window's last four: all in flight
    waiters = [asyncio.create_task(b.acquire()) for _ in range(3)]
    await asyncio.sleep(0.01)
    assert not any(w.done() for w in waiters)
    # Two answers that did not create (a 400): their slots come back, for two waiters.
    await b.observe(RateLimit(10, 4, reset), created=False)
    await b.observe(RateLimit(10, 4, reset), created=False)
    await asyncio.sleep(0.01)
    assert sum(w.done() for w in waiters) == 2
    assert b.in_flight == 4
    for w in waiters:
        w.cancel()


async def test_stale_higher_remaining_does_not_raise_the_budget() -> None:
    """Out-of-order responses: the lowest Remaining of a window wins."""
    clock = FakeClock()
    b = budget(clock)
    reset = clock.now + 100
    await b.acquire()
    await b.observe(RateLimit(10, 9, reset), created=True)
    await b.acquire()
    await b.acquire()
    await b.observe(RateLimit(10, 7, reset), created=True)
    await b.observe(RateLimit(10, 8, reset), created=True)
    assert b.remaining == 7


async def test_operator_cap_limits_creations_per_window() -> None:
    """--quota caps our creations below the server's limit."""
    clock = FakeClock()
    b = budget(clock, cap=2, max_wait=0)
    reset = clock.now + 10_000
    await b.acquire()
    await b.observe(RateLimit(100, 99, reset), created=True)
    await b.acquire()
    await b.observe(RateLimit(100, 98, reset), created=True)
    with pytest.raises(Deferred) as info:
        await b.acquire()
    assert info.value.reason == "quota"
    assert info.value.resume_at is not None
    assert info.value.resume_at >= reset


async def test_spent_window_waits_for_reset_within_max_wait() -> None:
    """Remaining 0 with the reset 30 s away and max_wait 60: wait, then probe the new window."""
    clock = FakeClock()
    b = budget(clock, max_wait=60)
    reset = clock.now + 30
    await b.acquire()
    await b.observe(RateLimit(1, 0, reset), created=True)
    await b.acquire()
    assert clock.now >= reset
    assert not b.known  # the new window is learned by this single probe
    assert b.in_flight == 1


async def test_spent_window_defers_beyond_max_wait() -> None:
    """Remaining 0 with the reset an hour away and max_wait 300: the rest is deferred."""
    clock = FakeClock()
    b = budget(clock, max_wait=300)
    await b.acquire()
    await b.observe(RateLimit(1, 0, clock.now + 3600), created=True)
    with pytest.raises(Deferred):
        await b.acquire()
    with pytest.raises(Deferred):
        await b.acquire()  # and it stays deferred


async def test_429_pauses_until_reset_then_one_probe() -> None:
    """A 429 pauses everyone until the reset; after it a single probe goes first."""
    clock = FakeClock()
    b = budget(clock, max_wait=60)
    reset = clock.now + 20
    await b.acquire()
    await b.observe(RateLimit(100, 50, reset), created=True)
    await b.acquire()
    await b.observe(RateLimit(100, 0, reset), created=False, rate_limited=True)
    assert b.http_429 == 1
    waiters = [asyncio.create_task(b.acquire()) for _ in range(5)]
    await asyncio.sleep(0.05)
    assert sum(w.done() for w in waiters) == 1  # no thundering herd after the reset
    assert clock.now >= reset
    for w in waiters:
        w.cancel()


async def test_429_honours_retry_after() -> None:
    """Retry-After, when present, sets the pause."""
    clock = FakeClock()
    b = budget(clock, max_wait=60)
    start = clock.now
    await b.acquire()
    await b.observe(None, created=False, rate_limited=True, retry_after=7)
    await b.acquire()
    assert clock.now - start == pytest.approx(7)


async def test_missing_headers_assume_configured_default() -> None:
    """Without headers, the configured default quota and window are assumed and counted."""
    clock = FakeClock(now=86400 * 10 + 5)
    b = budget(clock, default_limit=2, default_window=86400, max_wait=0)
    await b.acquire()
    await b.observe(None, created=True)
    assert b.reset_at == 86400 * 11
    await b.acquire()
    await b.observe(None, created=True)
    with pytest.raises(Deferred):
        await b.acquire()


async def test_defer_wakes_waiters() -> None:
    """defer() makes waiting acquirers raise at once (e.g. the key was refused)."""
    clock = FakeClock()
    b = budget(clock)
    await b.acquire()
    waiter = asyncio.create_task(b.acquire())
    await asyncio.sleep(0)
    await b.defer("key_refused")
    with pytest.raises(Deferred):
        await asyncio.wait_for(waiter, 1)


async def test_in_doubt_counts_as_spent() -> None:
    """A request of unknown fate counts against the operator cap."""
    clock = FakeClock()
    b = budget(clock, cap=1, max_wait=0)
    await b.acquire()
    await b.observe(RateLimit(100, 99, clock.now + 999), created=True)
    assert b.spent == 1
    with pytest.raises(Deferred):
        await b.acquire()


async def test_pacer_first_acquisition_is_immediate() -> None:
    """The pacer lets the first request through without waiting for a period."""
    pacer = Pacer(rate=1.0)
    await asyncio.wait_for(pacer.wait(), 0.5)


async def test_even_pace_spreads_what_is_left_until_the_reset() -> None:
    """pace=even: 10 requests left and 100 s to the reset: one request every 10 s."""

    clock = FakeClock()
    b = budget(clock)
    await b.acquire()
    await b.observe(RateLimit(100, 10, clock.now + 100), created=True)
    spreader = Spreader(b, clock=clock, sleep=clock.sleep)
    start = clock.now
    for _ in range(3):
        await spreader.wait()
    # 10 s, then 90 s left for the same 10 requests: 9 s (nothing was observed meanwhile)
    assert clock.now - start == pytest.approx(19.0, rel=0.01)


async def test_even_pace_honours_a_shorter_span() -> None:
    """pace_span shorter than the window: the quota is spread over the span instead."""

    clock = FakeClock()
    b = budget(clock)
    await b.acquire()
    await b.observe(RateLimit(100, 10, clock.now + 10_000), created=True)
    assert Spreader(b, span=50, clock=clock, sleep=clock.sleep).interval(clock.now) == 5.0


async def test_429_from_a_window_that_has_closed_does_not_pause() -> None:
    """A late 429 whose Reset is already past: no pause, the next request probes."""
    clock = FakeClock()
    b = budget(clock, max_wait=5)
    await b.acquire()
    await b.observe(RateLimit(10, 5, clock.now + 1), created=True)
    await b.acquire()
    clock.now += 2  # the window closed while the request was in flight
    await b.observe(RateLimit(10, 0, clock.now - 1), created=False, rate_limited=True)
    assert b.paused_until is None
    assert b.deferred is None
    await b.acquire()  # the probe of the new window


async def test_exhaust_waits_for_the_next_window_and_keeps_the_servers_remaining() -> None:
    """exhaust() (a group's shared budget spent) stops sending until the reset, though
    the server says quota remains; the server's Remaining is kept, and the next window
    sends again."""
    clock = FakeClock()
    b = budget(clock, max_wait=3600)
    await b.acquire()
    reset = clock.now + 60
    await b.observe(RateLimit(100, 90, reset), created=True)
    b.exhaust()
    assert b.remaining == 90
    await b.acquire()  # waits (the fake clock jumps) until the reset, then probes
    assert clock.now >= reset
    assert not b.exhausted
    assert not b.known  # the new window is probed before going wide


async def test_exhaust_past_max_wait_defers() -> None:
    """A group's spent window whose reset is beyond --max-wait defers, as a spent quota."""
    clock = FakeClock()
    b = budget(clock, max_wait=10)
    await b.acquire()
    await b.observe(RateLimit(100, 90, clock.now + 3600), created=True)
    b.exhaust()
    with pytest.raises(Deferred):
        await b.acquire()
