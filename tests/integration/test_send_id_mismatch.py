"""A success naming another send_id than the one requested (``send_id_mismatch``): what the
row's failure says, what the store keeps, and what the next run does, as README's error
table documents ("not counted as created; a rerun sends it again"); and a row without a
send_id, for which any id answered is Braze's own."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from provisioner.api import run_pipeline
from provisioner.sandbox.server import FaultRule, Sandbox

from .helpers import campaigns, outputs, settings_for, write_csv


def _store(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return list(conn.execute(sql))
    finally:
        conn.close()


async def test_a_mismatched_send_id_fails_the_row_naming_both_ids_and_is_never_stored_created(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """The row fails once (no retry), its message names the requested and the answered id,
    the store has no creation for it (neither id), and the next run sends it again."""
    sandbox.add_faults([FaultRule("other_send_id", campaign_id="c000001", times=1)])
    manifest = write_csv(tmp_path / "m.csv", campaigns(3))
    result = await run_pipeline(settings_for(sandbox.url, tmp_path, manifest))
    assert result.exit_code == 1
    results, failures, _, summary = outputs(tmp_path / "out")
    [failure] = failures
    assert (failure["campaign_id"], failure["error"]) == ("c000001", "send_id_mismatch")
    assert (failure["send_id"], failure["retryable"], failure["attempts"]) == ("s000001", False, 1)
    assert "'s000001-other'" in failure["message"]
    assert "'s000001'" in failure["message"]
    assert "c000001" in failure["message"]  # the campaign to look up in the dashboard
    assert summary["requests"] == 3  # not resent within the run
    assert {r["campaign_id"] for r in results} == {"c000000", "c000002"}
    state = tmp_path / "state.sqlite3"
    assert _store(state, "SELECT campaign_id, send_id FROM created ORDER BY 1") == [
        ("c000000", "s000000"),
        ("c000002", "s000002"),
    ]
    assert _store(state, "SELECT campaign_id FROM intents") == []  # not in doubt either
    assert _store(state, "SELECT status, error FROM outcomes WHERE campaign_id = 'c000001'") == [
        ("failed", "send_id_mismatch")
    ]

    # The next run skips the two created rows and sends the mismatched one again, with
    # the same send_id: the sandbox (like Braze) takes it as a repeat, nothing new is made.
    again = await run_pipeline(settings_for(sandbox.url, tmp_path, manifest))
    assert again.exit_code == 0
    results, failures, _, summary = outputs(tmp_path / "out")
    assert failures == []
    assert summary["requests"] == 1
    created = [(r["campaign_id"], r["send_id"]) for r in results if r["status"] == "created"]
    assert created == [("c000001", "s000001")]
    assert [(e.campaign_id, e.send_id) for e in sandbox.ledger.created].count(
        ("c000001", "s000001")
    ) == 1
    assert ("c000001", "s000001") in _store(state, "SELECT campaign_id, send_id FROM created")


async def test_a_row_without_a_send_id_is_created_with_the_id_braze_answered(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Without a requested send_id there is nothing to mismatch: the id answered (the
    sandbox's ``<generated>-other``) is the one reported and stored."""
    sandbox.add_faults([FaultRule("other_send_id", campaign_id="n000000", times=1)])
    manifest = write_csv(tmp_path / "m.csv", campaigns(1, with_send_id=False, prefix="n"))
    result = await run_pipeline(settings_for(sandbox.url, tmp_path, manifest))
    assert result.exit_code == 0
    [result_row] = outputs(tmp_path / "out")[0]
    [entry] = sandbox.ledger.created
    assert result_row["send_id"] == f"{entry.send_id}-other"
    stored = _store(tmp_path / "state.sqlite3", "SELECT campaign_id, send_id FROM created")
    assert stored == [("n000000", f"{entry.send_id}-other")]
