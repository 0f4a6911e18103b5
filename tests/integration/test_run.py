"""End to end against the sandbox over loopback: each response class, outputs, exit codes."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pytest

from provisioner.api import run_pipeline
from provisioner.sandbox.server import FaultRule, Sandbox
from tests.conftest import SandboxFactory

from .helpers import assert_invariant, campaigns, outputs, settings_for, write_csv


async def test_csv_manifest_creates_every_row(sandbox: Sandbox, tmp_path: Path) -> None:
    """A clean CSV manifest: every row created once, exit 0, ledger agrees."""
    manifest = write_csv(tmp_path / "m.csv", campaigns(40))
    result = await run_pipeline(settings_for(sandbox.url, tmp_path, manifest))
    assert result.exit_code == 0
    results, failures, deferred, summary = outputs(tmp_path / "out")
    assert {r["status"] for r in results} == {"created"}
    assert len(results) == 40
    assert not failures
    assert not deferred
    assert len(sandbox.ledger.created) == 40
    assert summary["counts"]["created"] == 40
    assert summary["requests"] == 40
    assert_invariant(tmp_path / "out", 40)


async def test_generated_send_ids_are_reported(sandbox: Sandbox, tmp_path: Path) -> None:
    """Rows without a send_id get Braze's generated id in results.jsonl."""
    manifest = write_csv(tmp_path / "m.csv", campaigns(5, with_send_id=False))
    await run_pipeline(settings_for(sandbox.url, tmp_path, manifest))
    results, *_ = outputs(tmp_path / "out")
    ledger_ids = {e.send_id for e in sandbox.ledger.created}
    assert {r["send_id"] for r in results} == ledger_ids


async def test_jsonl_gzip_manifest_passes_columns_through(sandbox: Sandbox, tmp_path: Path) -> None:
    """A gzipped JSONL manifest works and extra keys reach results.jsonl."""
    path = tmp_path / "m.jsonl.gz"
    with gzip.open(path, "wb") as fh:
        for i in range(10):
            fh.write(orjson.dumps({"campaign_id": f"c{i}", "send_id": f"s{i}", "team": i}) + b"\n")
    result = await run_pipeline(settings_for(sandbox.url, tmp_path, path))
    assert result.exit_code == 0
    results, *_ = outputs(tmp_path / "out")
    assert sorted(r["team"] for r in results) == list(range(10))


async def test_invalid_malformed_and_duplicate_rows(sandbox: Sandbox, tmp_path: Path) -> None:
    """Bad rows go to failures with line and field, duplicates to results, none are sent."""
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "campaign_id,send_id\n"
        "c1,s1\n"  # line 2
        ",s2\n"  # line 3: empty campaign_id
        f"c3,{'x' * 65}\n"  # line 4: send_id too long
        "c4,s4,extra\n"  # line 5: wrong column count
        "c1,s1\n"  # line 6: duplicate of line 2
        "c5,sé\n"  # line 7: non-ASCII send_id
    )
    result = await run_pipeline(settings_for(sandbox.url, tmp_path, manifest))
    assert result.exit_code == 1
    results, failures, _, _ = outputs(tmp_path / "out")
    by_line = {f["line"]: f for f in failures}
    assert by_line[3]["field"] == "campaign_id"
    assert by_line[4]["error"] == "too_long"
    assert by_line[5]["error"] == "wrong_column_count"
    assert by_line[7]["error"] == "not_ascii"
    dup = next(r for r in results if r["line"] == 6)
    assert dup["status"] == "duplicate"
    assert dup["duplicate_of"] == 2
    assert sandbox.ledger.by_status.get("201") == 1
    assert_invariant(tmp_path / "out", 6)


async def test_400_fails_the_row_only(sandbox: Sandbox, tmp_path: Path) -> None:
    """A 400 for one campaign is a permanent failure of that row; the others are created."""
    sandbox.add_faults([FaultRule(action="status", status=400, campaign_id="c000002")])
    manifest = write_csv(tmp_path / "m.csv", campaigns(5))
    result = await run_pipeline(settings_for(sandbox.url, tmp_path, manifest))
    assert result.exit_code == 1
    _, failures, _, _ = outputs(tmp_path / "out")
    assert [(f["campaign_id"], f["error"], f["retryable"]) for f in failures] == [
        ("c000002", "invalid_campaign_id", False)
    ]


@pytest.mark.parametrize("status", [401, 403, 404])
async def test_refused_key_stops_and_defers(sandbox: Sandbox, tmp_path: Path, status: int) -> None:
    """401/403/404 stop sending at once: exit 4, the rest deferred with that reason."""
    sandbox.add_faults([FaultRule(action="status", status=status)])
    manifest = write_csv(tmp_path / "m.csv", campaigns(50))
    result = await run_pipeline(settings_for(sandbox.url, tmp_path, manifest, concurrency=2))
    assert result.exit_code == 4
    results, failures, deferred, summary = outputs(tmp_path / "out")
    assert not results
    assert not failures
    assert len(deferred) == 50
    assert summary["requests"] <= 2  # stopped at once: only what was already in flight
    assert summary["deferred_reasons"] == {"key_refused": 50}
    assert_invariant(tmp_path / "out", 50)


async def test_5xx_is_retried_then_succeeds(sandbox: Sandbox, tmp_path: Path) -> None:
    """Two 503s then success: created, with attempts=3 and retries counted."""
    sandbox.add_faults([FaultRule(action="status", status=503, times=2)])
    manifest = write_csv(tmp_path / "m.csv", campaigns(1))
    result = await run_pipeline(settings_for(sandbox.url, tmp_path, manifest))
    assert result.exit_code == 0
    results, _, _, summary = outputs(tmp_path / "out")
    assert results[0]["attempts"] == 3
    assert summary["retries"] == 2


async def test_5xx_forever_fails_after_capped_attempts(sandbox: Sandbox, tmp_path: Path) -> None:
    """One campaign always answered 500: a retryable server_error after exactly --attempts
    requests; the other rows are created."""
    sandbox.add_faults([FaultRule(action="status", status=500, campaign_id="c000001")])
    manifest = write_csv(tmp_path / "m.csv", campaigns(6))
    result = await run_pipeline(settings_for(sandbox.url, tmp_path, manifest))
    assert result.exit_code == 1
    results, failures, _, summary = outputs(tmp_path / "out")
    assert [(f["campaign_id"], f["error"], f["attempts"]) for f in failures] == [
        ("c000001", "server_error", 5)
    ]
    assert failures[0]["retryable"]
    assert len(results) == 5
    assert summary["requests"] == 10


async def test_outage_beyond_max_wait_defers_the_rest(sandbox: Sandbox, tmp_path: Path) -> None:
    """Every request answered 503: the breaker opens, probes, and after --max-wait the rows
    are deferred as an outage (not failed), with a bounded number of requests."""
    sandbox.add_faults([FaultRule(action="status", status=503)])
    manifest = write_csv(tmp_path / "m.csv", campaigns(40))
    result = await run_pipeline(
        settings_for(sandbox.url, tmp_path, manifest, max_wait=1.5, concurrency=4)
    )
    _, failures, _deferred, summary = outputs(tmp_path / "out")
    assert result.exit_code == 3
    assert not failures
    assert summary["deferred_reasons"] == {"outage": 40}
    assert summary["requests"] <= 5 + 4 + 3  # threshold, in flight when it opened, probes
    assert summary["quota"]["breaker_opened"] == 1


async def test_short_outage_is_ridden_out(sandbox: Sandbox, tmp_path: Path) -> None:
    """An outage shorter than --max-wait: the breaker probes until Braze answers, then every
    row is created."""
    sandbox.add_faults([FaultRule(action="status", status=503, times=6)])
    manifest = write_csv(tmp_path / "m.csv", campaigns(20))
    result = await run_pipeline(
        settings_for(sandbox.url, tmp_path, manifest, max_wait=20, concurrency=4)
    )
    assert result.exit_code == 0
    assert len(sandbox.ledger.created) == 20


async def test_drop_after_send_without_send_id_is_in_doubt(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """A dropped connection for a row without send_id: in_doubt, never resent."""
    sandbox.add_faults([FaultRule(action="drop_after", times=1)])
    manifest = write_csv(tmp_path / "m.csv", campaigns(1, with_send_id=False))
    result = await run_pipeline(settings_for(sandbox.url, tmp_path, manifest))
    assert result.exit_code == 1
    _, failures, _, summary = outputs(tmp_path / "out")
    assert failures[0]["error"] == "in_doubt"
    assert "dashboard" in failures[0]["message"]
    assert summary["requests"] == 1


async def test_drop_with_send_id_is_retried_safely(sandbox: Sandbox, tmp_path: Path) -> None:
    """A dropped connection for a row with a send_id is retried; one ledger entry only."""
    sandbox.add_faults([FaultRule(action="drop_after", times=1)])
    manifest = write_csv(tmp_path / "m.csv", campaigns(1))
    result = await run_pipeline(settings_for(sandbox.url, tmp_path, manifest))
    assert result.exit_code == 0
    assert len(sandbox.ledger.created) == 1


async def test_read_timeout_without_send_id_is_in_doubt(sandbox: Sandbox, tmp_path: Path) -> None:
    """A response slower than the read timeout: in doubt for a row without send_id."""
    sandbox.add_faults([FaultRule(action="delay", delay_ms=3000, times=1)])
    manifest = write_csv(tmp_path / "m.csv", campaigns(1, with_send_id=False))
    await run_pipeline(settings_for(sandbox.url, tmp_path, manifest))
    _, failures, _, _ = outputs(tmp_path / "out")
    assert failures[0]["error"] == "in_doubt"


@pytest.mark.parametrize(
    ("action", "with_send_id", "error"),
    [
        ("queued", False, "in_doubt"),
        ("queued", True, "queued"),
        ("not_json", False, "in_doubt"),
        ("no_send_id", True, "bad_response"),
    ],
)
async def test_unknown_outcomes_are_reported(
    sandbox: Sandbox, tmp_path: Path, action: str, with_send_id: bool, error: str
) -> None:
    """202 queued and unusable 2xx bodies: reported as not known, never as created."""
    sandbox.add_faults([FaultRule(action=action, times=1)])
    manifest = write_csv(tmp_path / "m.csv", campaigns(1, with_send_id=with_send_id))
    await run_pipeline(settings_for(sandbox.url, tmp_path, manifest))
    _, failures, _, _ = outputs(tmp_path / "out")
    assert failures[0]["error"] == error
    assert failures[0]["retryable"] is with_send_id


async def test_429_waits_for_the_reset_then_finishes(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """Quota 4 per 1-second window, 10 rows: pauses at each reset, all created, exit 0."""
    sandbox = await sandbox_factory(daily_quota=4, window_seconds=1)
    manifest = write_csv(tmp_path / "m.csv", campaigns(10))
    result = await run_pipeline(settings_for(sandbox.url, tmp_path, manifest, max_wait=5))
    assert result.exit_code == 0
    assert len(sandbox.ledger.created) == 10
    assert sandbox.ledger.by_status.get("429", 0) == 0  # the headers were enough


async def test_quota_beyond_max_wait_defers_the_rest(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """Quota spent with the reset past --max-wait: the rest deferred, exit 3."""
    sandbox = await sandbox_factory(daily_quota=3)
    manifest = write_csv(tmp_path / "m.csv", campaigns(10))
    result = await run_pipeline(settings_for(sandbox.url, tmp_path, manifest, max_wait=1))
    assert result.exit_code == 3
    results, failures, deferred, summary = outputs(tmp_path / "out")
    assert len(results) == 3
    assert not failures
    assert len(deferred) == 7
    assert summary["deferred_reasons"] == {"quota": 7}
    assert sandbox.ledger.by_status.get("429", 0) == 0


async def test_operator_cap_leaves_quota_for_others(sandbox: Sandbox, tmp_path: Path) -> None:
    """--quota 4 creates four and defers the rest even though the server allows 100."""
    manifest = write_csv(tmp_path / "m.csv", campaigns(9))
    result = await run_pipeline(settings_for(sandbox.url, tmp_path, manifest, quota=4, max_wait=0))
    assert result.exit_code == 3
    assert len(sandbox.ledger.created) == 4


async def test_unexpected_429_pauses_not_fails(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """A 429 storm (another client spent the quota) is never a row failure."""
    sandbox = await sandbox_factory(window_seconds=1)
    sandbox.add_faults([FaultRule(action="rate_limit", times=3)])
    manifest = write_csv(tmp_path / "m.csv", campaigns(6))
    result = await run_pipeline(settings_for(sandbox.url, tmp_path, manifest, max_wait=5))
    assert result.exit_code == 0
    _, failures, _, summary = outputs(tmp_path / "out")
    assert not failures
    assert summary["http_429"] >= 1


async def test_server_down_defers_as_an_outage(tmp_path: Path) -> None:
    """Nothing listening and nothing ever answered: the rows are deferred, not failed, as
    `unreachable` (exit 4: a wrong base URL, issue 13), not as an outage."""
    manifest = write_csv(tmp_path / "m.csv", campaigns(5))
    result = await run_pipeline(settings_for("http://127.0.0.1:9", tmp_path, manifest, max_wait=1))
    assert result.exit_code == 4
    _, failures, _deferred, summary = outputs(tmp_path / "out")
    assert not failures
    assert summary["deferred_reasons"] == {"unreachable": 5}
