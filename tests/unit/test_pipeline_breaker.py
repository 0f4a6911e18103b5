"""The run's circuit breaker, through a scripted sender on a fake clock."""

from __future__ import annotations

from pathlib import Path

from provisioner._braze.breaker import FIRST_COOL_DOWN
from provisioner._core.models import Status
from provisioner.testing import (
    FakeClock,
    ScriptedSender,
    connect_failed,
    invalid,
    server_error,
)
from tests.unit.pipeline_kit import pipeline, row


async def test_five_failures_open_the_breaker_and_a_lone_probe_closes_it(tmp_path: Path) -> None:
    """Five 5xx in a row open the breaker: the sixth row waits the cool-down on the clock,
    goes as the probe, and its success closes the breaker for the seventh."""
    clock = FakeClock()
    sender = ScriptedSender([server_error()] * 5)
    async with pipeline(tmp_path, sender, clock=clock, retry_attempts=1) as kit:
        outs = await kit.send([row(n, send_id=f"s{n}") for n in range(2, 9)])
    assert [o.status for o in outs] == [Status.FAILED] * 5 + [Status.CREATED] * 2
    assert kit.lane.breaker.opened == 1
    assert not kit.lane.breaker.is_open
    assert FIRST_COOL_DOWN in clock.slept
    assert sender.calls == 7


async def test_an_outage_longer_than_max_wait_defers_the_rest_as_outage(tmp_path: Path) -> None:
    """Braze stays down past --max-wait: the rows still queued are deferred with reason
    outage (not failed), and the lane's message names the last error."""
    clock = FakeClock()
    sender = ScriptedSender(default=connect_failed("connection refused"))
    async with pipeline(tmp_path, sender, clock=clock, retry_attempts=1, max_wait=10.0) as kit:
        outs = await kit.send([row(n, send_id=f"s{n}") for n in range(2, 12)])
    statuses = [o.status for o in outs]
    assert statuses[:5] == [Status.FAILED] * 5
    assert Status.DEFERRED in statuses
    assert {o.reason for o in outs if o.status is Status.DEFERRED} == {"outage"}
    message = kit.lane.summary()["stop_message"]
    assert isinstance(message, str)
    assert "connection refused" in message
    assert kit.run.exit_code() == 1  # the five failed rows


async def test_a_4xx_does_not_count_towards_opening_the_breaker(tmp_path: Path) -> None:
    """Answers about the request (400) are the server working: four 5xx, a 400, four 5xx
    never make five in a row."""
    clock = FakeClock()
    sender = ScriptedSender([server_error()] * 4 + [invalid()] + [server_error()] * 4)
    async with pipeline(tmp_path, sender, clock=clock, retry_attempts=1) as kit:
        await kit.send([row(n, send_id=f"s{n}") for n in range(2, 11)])
    assert kit.lane.breaker.opened == 0
    assert sender.calls == 9
