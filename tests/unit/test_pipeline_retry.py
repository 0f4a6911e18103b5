"""The run's retries, through a scripted sender: what is resent, how often, and what not."""

from __future__ import annotations

from pathlib import Path

from provisioner._core.models import Status
from provisioner.testing import (
    ScriptedSender,
    connect_failed,
    created,
    invalid,
    queued,
    server_error,
)
from tests.unit.pipeline_kit import pipeline, row


async def test_a_5xx_is_retried_after_a_backoff_and_then_created(tmp_path: Path) -> None:
    """A 503 then a success: one row created in two attempts, one retry, one backoff sleep."""
    sender = ScriptedSender([server_error(503), created()])
    async with pipeline(tmp_path, sender) as kit:
        [out] = await kit.send([row(2)])
    assert out.status is Status.CREATED
    assert out.attempts == 2
    assert kit.run.stats.retries == 1
    assert sender.calls == 2
    assert len(kit.clock.slept) == 1  # the backoff, on the fake clock


async def test_5xx_until_the_attempts_run_out_fails_the_row_as_retryable(tmp_path: Path) -> None:
    """Every attempt answers 500: the row fails with server_error, retryable, after exactly
    --retry-attempts requests."""
    sender = ScriptedSender(default=server_error(500))
    async with pipeline(tmp_path, sender, retry_attempts=3) as kit:
        [out] = await kit.send([row(2, send_id="s-1")])
    assert out.status is Status.FAILED
    assert (out.error, out.retryable, out.attempts, out.http_status) == (
        "server_error", True, 3, 500,
    )  # fmt: skip
    assert sender.calls == 3


async def test_a_connection_that_never_left_is_resent_even_without_a_send_id(
    tmp_path: Path,
) -> None:
    """ConnectFailed means nothing reached Braze: a row without send_id is resent safely."""
    sender = ScriptedSender([connect_failed(), created("new-id")])
    async with pipeline(tmp_path, sender) as kit:
        [out] = await kit.send([row(2)])
    assert (out.status, out.send_id, out.attempts) == (Status.CREATED, "new-id", 2)
    assert [r.send_id for r in sender.requests] == [None, None]


async def test_a_4xx_fails_the_row_at_once_without_a_retry(tmp_path: Path) -> None:
    """400 is the row's fault: failed, not retryable, one request, no sleep."""
    sender = ScriptedSender([invalid(400, "Invalid campaign_id")])
    async with pipeline(tmp_path, sender) as kit:
        [out] = await kit.send([row(2)])
    assert (out.status, out.retryable, out.attempts, out.http_status) == (
        Status.FAILED, False, 1, 400,
    )  # fmt: skip
    assert sender.calls == 1
    assert kit.clock.slept == []
    assert kit.run.stats.retries == 0


async def test_queued_is_not_resent(tmp_path: Path) -> None:
    """202 queued: Braze took it without a send_id; resending could create twice."""
    sender = ScriptedSender([queued()])
    async with pipeline(tmp_path, sender) as kit:
        [out] = await kit.send([row(2)])
    assert out.status is Status.FAILED
    assert sender.calls == 1


async def test_the_retry_budget_bounds_retries_across_rows(tmp_path: Path) -> None:
    """With the run's retry budget spent, a failing row fails after one attempt, its
    message saying the budget stopped it."""
    sender = ScriptedSender(default=server_error(503))
    async with pipeline(tmp_path, sender, retry_attempts=5) as kit:
        kit.run.retry_budget.floor = 1
        kit.run.retry_budget.ratio = 0.0
        outs = await kit.send([row(2, send_id="a"), row(3, send_id="b")])
    assert [o.attempts for o in outs] == [2, 1]  # one retry in all, then none
    assert all(o.status is Status.FAILED and o.retryable for o in outs)
    assert kit.run.retry_budget.denied == 2
