"""The run's 429 handling, through a scripted sender on a fake clock: pause, resend, defer."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner._braze.quota import RESET_MARGIN, UNKNOWN_RESET_PAUSE
from provisioner._core.models import Status
from provisioner.testing import FakeClock, ScriptedSender, created, rate_limited
from tests.unit.pipeline_kit import pipeline, row

T0 = 1_000_000.0


async def test_a_429_pauses_until_the_reset_and_resends_the_row(tmp_path: Path) -> None:
    """A 429 whose window resets in 120 s: the run sleeps to the reset (plus the margin),
    sends the row again and creates it; the 429 is not a retry and costs no attempt cap."""
    clock = FakeClock(T0)
    sender = ScriptedSender([rate_limited(reset=T0 + 120), created()])
    async with pipeline(tmp_path, sender, clock=clock, retry_attempts=1) as kit:
        [out] = await kit.send([row(2, send_id="s-1")])
    assert out.status is Status.CREATED
    assert sender.calls == 2
    assert clock.now >= T0 + 120 + RESET_MARGIN
    assert sum(clock.slept) == pytest.approx(120 + RESET_MARGIN)
    assert (kit.run.stats.http_429, kit.run.stats.retries) == (1, 0)


async def test_retry_after_sets_the_pause(tmp_path: Path) -> None:
    """A 429 with Retry-After: 7 and no window headers: the run waits 7 s, then resends."""
    clock = FakeClock(T0)
    sender = ScriptedSender([rate_limited(retry_after=7), created()])
    async with pipeline(tmp_path, sender, clock=clock) as kit:
        [out] = await kit.send([row(2)])
    assert out.status is Status.CREATED
    assert sum(clock.slept) == pytest.approx(7)


async def test_a_429_that_says_nothing_pauses_a_minute(tmp_path: Path) -> None:
    """Neither a reset nor Retry-After: the pause is UNKNOWN_RESET_PAUSE, then a probe."""
    clock = FakeClock(T0)
    sender = ScriptedSender([rate_limited(), created()])
    async with pipeline(tmp_path, sender, clock=clock) as kit:
        [out] = await kit.send([row(2)])
    assert out.status is Status.CREATED
    assert sum(clock.slept) == pytest.approx(UNKNOWN_RESET_PAUSE)


async def test_a_reset_beyond_max_wait_defers_the_row_and_the_rest(tmp_path: Path) -> None:
    """The window resets in an hour, --max-wait is 300 s: the row and every later row are
    deferred as rate_limited, with no further request and no sleep."""
    clock = FakeClock(T0)
    sender = ScriptedSender([rate_limited(reset=T0 + 3600)])
    async with pipeline(tmp_path, sender, clock=clock, max_wait=300.0) as kit:
        outs = await kit.send([row(2, send_id="a"), row(3, send_id="b"), row(4, send_id="c")])
    assert [(o.status, o.reason) for o in outs] == [(Status.DEFERRED, "rate_limited")] * 3
    assert sender.calls == 1
    assert clock.slept == []
    assert kit.run.exit_code() == 3
    assert kit.lane.windows_needed() == 1


async def test_a_spent_window_pauses_before_sending_not_after_a_429(tmp_path: Path) -> None:
    """The headers say Remaining 1 of 2: the second row waits for the reset before it is
    sent, so Braze never answers 429."""
    clock = FakeClock(T0)
    sender = ScriptedSender(limit=2, reset_at=T0 + 60)
    sender.created = 1  # another client spent one of the window's two
    async with pipeline(tmp_path, sender, clock=clock) as kit:
        outs = await kit.send([row(2, send_id="a"), row(3, send_id="b")])
    assert [o.status for o in outs] == [Status.CREATED, Status.CREATED]
    assert kit.run.stats.http_429 == 0
    assert clock.now >= T0 + 60
