"""The Python API end to end against the sandbox: blocking and async forms, own errors."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from provisioner import api
from provisioner.errors import ManifestError, ProvisionerError
from provisioner.sandbox.server import Sandbox

from .helpers import ROOT, campaigns, settings_for, write_csv


async def test_blocking_run_returns_a_summary(sandbox: Sandbox, tmp_path: Path) -> None:
    """api.run (blocking, its own loop) provisions and returns counts and exit code."""
    manifest = write_csv(tmp_path / "m.csv", campaigns(12))
    result = await asyncio.to_thread(api.run, settings_for(sandbox.url, tmp_path, manifest))
    assert result.succeeded
    assert not result.needs_rerun
    assert result.counts["created"] == 12
    assert len(sandbox.ledger.created) == 12


async def test_async_run_reports_deferral(sandbox: Sandbox, tmp_path: Path) -> None:
    """api.run_async in a running loop; a quota deferral is exit 3 and needs_rerun."""
    manifest = write_csv(tmp_path / "m.csv", campaigns(6))
    result = await api.run_async(settings_for(sandbox.url, tmp_path, manifest, quota=2, max_wait=0))
    assert result.exit_code == 3
    assert result.needs_rerun
    assert result.counts == {"created": 2, "duplicate": 0, "skipped": 0, "failed": 0, "deferred": 4}


async def test_errors_are_the_projects_own(sandbox: Sandbox, tmp_path: Path) -> None:
    """A missing manifest raises ManifestError (a ProvisionerError), nothing is sent."""
    with pytest.raises(ManifestError) as info:
        await api.run_async(settings_for(sandbox.url, tmp_path, tmp_path / "missing.csv"))
    assert isinstance(info.value, ProvisionerError)
    assert sandbox.ledger.total == 0


async def test_airflow_style_example_task(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The documented orchestrator example runs end to end and returns the counts."""
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    monkeypatch.setenv("BRAZE_API_KEY", "sandbox-key")
    monkeypatch.setenv("PROVISIONER_BASE_URL", sandbox.url)
    monkeypatch.setenv("PROVISIONER_STATE", str(tmp_path / "state.sqlite3"))
    monkeypatch.setenv("PROVISIONER_RATE", "5000")
    import airflow_task

    manifest = write_csv(tmp_path / "m.csv", campaigns(5))
    counts = await asyncio.to_thread(
        airflow_task.provision_campaigns, str(manifest), str(tmp_path / "out")
    )
    assert counts["created"] == 5
    with pytest.raises(airflow_task.ProvisioningIncomplete):
        await asyncio.to_thread(
            airflow_task.provision_campaigns, str(tmp_path / "nope.csv"), str(tmp_path / "o2")
        )
    sys.modules.pop("airflow_task", None)
