"""Lost answers and refused keys in the run, through a scripted sender: nothing is sent
twice that could create twice, and a refused key stops its lane at once."""

from __future__ import annotations

from pathlib import Path

from provisioner._core.models import Status
from provisioner.testing import ScriptedSender, created, in_doubt, key_refused, redirected
from tests.unit.pipeline_kit import key_of, pipeline, row


async def test_a_lost_answer_without_send_id_is_in_doubt_and_not_resent(tmp_path: Path) -> None:
    """InDoubt for a row without send_id: failed in_doubt after one request (a resend
    could create a second id), and its intent stays open in the store for the next run."""
    sender = ScriptedSender([in_doubt()])
    async with pipeline(tmp_path, sender) as kit:
        r = row(2)
        [out] = await kit.send([r])
        prior = kit.store.lookup_many(kit.lane.label, [key_of(r)]).get(key_of(r))
    assert (out.status, out.error, out.retryable) == (Status.FAILED, "in_doubt", False)
    assert sender.calls == 1
    assert prior is not None
    assert prior.kind != "created"


async def test_a_lost_answer_with_a_send_id_is_resent_with_the_same_send_id(
    tmp_path: Path,
) -> None:
    """InDoubt for a row with its send_id: a repeat is the same combination, so the run
    resends it (as a retry) and the row is created."""
    sender = ScriptedSender([in_doubt(), created()])
    async with pipeline(tmp_path, sender) as kit:
        [out] = await kit.send([row(2, send_id="mine")])
    assert (out.status, out.send_id, out.attempts) == (Status.CREATED, "mine", 2)
    assert [r.send_id for r in sender.requests] == ["mine", "mine"]
    assert kit.run.stats.retries == 1


async def test_a_refused_key_stops_the_lane_and_defers_the_rest(tmp_path: Path) -> None:
    """401: the row and every later one are deferred as key_refused after one request;
    the run's exit code is 4."""
    sender = ScriptedSender([key_refused(401)])
    async with pipeline(tmp_path, sender) as kit:
        outs = await kit.send([row(2, send_id="a"), row(3, send_id="b")])
    assert [(o.status, o.reason) for o in outs] == [(Status.DEFERRED, "key_refused")] * 2
    assert sender.calls == 1
    assert kit.run.exit_code() == 4


async def test_a_redirect_stops_the_lane_and_names_its_target_host(tmp_path: Path) -> None:
    """302 to a login page: never followed; the lane stops with a message naming the
    target's host, not its path."""
    sender = ScriptedSender([redirected("https://login.example.invalid/sso?token=x")])
    async with pipeline(tmp_path, sender) as kit:
        [out] = await kit.send([row(2, send_id="a")])
    assert (out.status, out.reason) == (Status.DEFERRED, "redirected")
    message = kit.lane.stop_message or ""
    assert "https://login.example.invalid" in message
    assert "token" not in message
