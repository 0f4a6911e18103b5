"""Several workspaces in one run, and quota budgets that hold across runs."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path
from typing import Any

from provisioner._config.settings import Settings, build_settings
from provisioner.api import run_pipeline
from provisioner.sandbox.server import FaultRule, Sandbox, workspace_label
from tests.conftest import SandboxFactory

from .helpers import campaigns, outputs, settings_for, write_csv

ENV = {"KEY_US": "key-us", "KEY_EU": "key-eu"}


def two_workspaces(url: str, tmp_path: Path, manifest: Path, **cli: Any) -> Settings:
    config = tmp_path / "ws.toml"
    config.write_text(
        f'[[workspaces]]\nname = "us"\nbase_url = "{url}"\napi_key_env = "KEY_US"\n'
        f"default = true\n\n"
        f'[[workspaces]]\nname = "eu"\nbase_url = "{url}"\napi_key_env = "KEY_EU"\nquota = 3\n'
        "[retry]\nbackoff_base = 0.01\nbackoff_cap = 0.05\n"
    )
    return build_settings(
        manifest=str(manifest), out_dir=tmp_path / "out",
        cli={"rate": 5000.0, "state_path": str(tmp_path / "state.sqlite3"), **cli},
        env=ENV, config_path=config,
    )  # fmt: skip


def manifest_for_both(tmp_path: Path, n: int) -> Path:
    rows = [(f"c{i:04d}", f"s{i:04d}", "us" if i % 2 else "eu") for i in range(n)]
    rows.append(("c9999", "s9999", ""))  # no workspace: the default (us)
    return write_csv(tmp_path / "m.csv", rows, header=("campaign_id", "send_id", "workspace"))


async def test_rows_go_to_their_workspace_with_its_own_cap(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """The workspace column routes rows; each workspace has its own key and quota cap."""
    sandbox = await sandbox_factory(api_keys=("key-us", "key-eu"))
    manifest = manifest_for_both(tmp_path, 10)
    result = await run_pipeline(two_workspaces(sandbox.url, tmp_path, manifest, max_wait=0))
    created = Counter(e.workspace for e in sandbox.ledger.created)
    assert created[workspace_label("key-us")] == 6  # five odd rows and the default row
    assert created[workspace_label("key-eu")] == 3  # its cap of 3; the other 2 deferred
    assert result.exit_code == 3
    _, _, deferred, summary = outputs(tmp_path / "out")
    assert {d["workspace"] for d in deferred} == {"eu"}  # deferred.csv keeps the column
    by_name = {w["name"]: w for w in summary["workspaces"]}
    assert by_name["eu"]["windows_needed"] == 1


async def test_one_refused_key_does_not_stop_the_others(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """eu's key is refused (401): eu's rows are deferred, us's rows are all created, exit 4."""
    sandbox = await sandbox_factory(api_keys=("key-us",))
    manifest = manifest_for_both(tmp_path, 20)
    result = await run_pipeline(two_workspaces(sandbox.url, tmp_path, manifest))
    assert result.exit_code == 4
    results, failures, deferred, summary = outputs(tmp_path / "out")
    assert len(results) == 11
    assert not failures
    assert len(deferred) == 10
    assert summary["deferred_reasons"] == {"key_refused": 10}


async def test_unknown_workspace_fails_the_row(sandbox: Sandbox, tmp_path: Path) -> None:
    """A row naming an undeclared workspace fails with unknown_workspace and is not sent."""
    manifest = write_csv(
        tmp_path / "m.csv", [("c1", "s1", "mars")], header=("campaign_id", "send_id", "workspace")
    )
    result = await run_pipeline(settings_for(sandbox.url, tmp_path, manifest))
    assert result.exit_code == 1
    _, failures, _, _ = outputs(tmp_path / "out")
    assert failures[0]["error"] == "unknown_workspace"
    assert sandbox.ledger.total == 0


async def test_operator_cap_holds_across_runs_in_a_window(sandbox: Sandbox, tmp_path: Path) -> None:
    """--quota 4: a first run creates 4; a second run in the same window creates none."""
    write_csv(tmp_path / "m.csv", campaigns(10))
    first = await run_pipeline(
        settings_for(sandbox.url, tmp_path, tmp_path / "m.csv", quota=4, max_wait=0)
    )
    assert first.counts["created"] == 4
    second = await run_pipeline(
        settings_for(sandbox.url, tmp_path, tmp_path / "m.csv", quota=4, max_wait=0)
    )
    assert second.counts["created"] == 0
    assert second.counts["skipped"] == 4
    assert second.counts["deferred"] == 6
    assert len(sandbox.ledger.created) == 4


async def test_shared_window_seen_by_an_earlier_run_is_not_burst(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """A restart in the same window starts from the remaining quota the store recorded:
    with 5 left it creates 5 and gets no 429."""
    sandbox = await sandbox_factory(daily_quota=8)
    write_csv(tmp_path / "m.csv", campaigns(3))
    await run_pipeline(settings_for(sandbox.url, tmp_path, tmp_path / "m.csv"))
    write_csv(tmp_path / "m.csv", campaigns(12))
    result = await run_pipeline(settings_for(sandbox.url, tmp_path, tmp_path / "m.csv", max_wait=0))
    assert result.counts == {"created": 5, "duplicate": 0, "skipped": 3, "failed": 0, "deferred": 4}
    assert sandbox.ledger.by_status.get("429", 0) == 0


async def test_breaker_isolated_per_workspace(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """An outage of eu's campaigns (503) defers eu as an outage; us finishes."""
    sandbox = await sandbox_factory(api_keys=("key-us", "key-eu"))
    eu = [f"c{i:04d}" for i in range(0, 40, 2)]
    sandbox.add_faults([FaultRule(action="status", status=503, campaign_id=c) for c in eu])
    manifest = manifest_for_both(tmp_path, 40)
    result = await run_pipeline(two_workspaces(sandbox.url, tmp_path, manifest, max_wait=1.5))
    results, failures, _deferred, summary = outputs(tmp_path / "out")
    assert {r["workspace"] for r in results if r.get("workspace")} == {"us"}
    assert len(results) == 21
    assert summary["deferred_reasons"].get("outage", 0) + len(failures) == 20
    assert result.exit_code in (1, 3)


async def test_even_pace_spreads_creations_over_the_window(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """pace=even with 3 creations left in a 4-second window: no burst, spread to the reset."""
    sandbox = await sandbox_factory(daily_quota=4, window_seconds=4)
    manifest = write_csv(tmp_path / "m.csv", campaigns(4))
    result = await run_pipeline(
        settings_for(sandbox.url, tmp_path, manifest, pace="even", max_wait=10)
    )
    assert result.exit_code == 0
    at = sorted(e.at for e in sandbox.ledger.created)
    window_end = (int(at[0]) // 4 + 1) * 4
    gaps = [b - a for a, b in itertools.pairwise(at) if b < window_end]
    expected = (window_end - at[0]) / 3  # the probe, then 3 left over the time to the reset
    assert all(gap > expected * 0.5 for gap in gaps), (gaps, expected)


async def test_rows_without_send_id_go_to_their_workspace(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """A row without a send_id is routed by its workspace column too (it went to the default)."""
    sandbox = await sandbox_factory(api_keys=("key-us", "key-eu"))
    rows = [("c-eu", "", "eu"), ("c-us", "", "us"), ("c-mars", "", "mars")]
    manifest = write_csv(tmp_path / "m.csv", rows, header=("campaign_id", "send_id", "workspace"))
    result = await run_pipeline(two_workspaces(sandbox.url, tmp_path, manifest))
    assert result.exit_code == 1
    where = {e.campaign_id: e.workspace for e in sandbox.ledger.created}
    assert where == {"c-eu": workspace_label("key-eu"), "c-us": workspace_label("key-us")}
    _, failures, _, _ = outputs(tmp_path / "out")
    assert [(f["line"], f["error"]) for f in failures] == [(4, "unknown_workspace")]
