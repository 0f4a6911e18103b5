"""``validate`` forecasts what ``run`` then does, for every kind of row, prior and flag."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from provisioner._core.identity import derive_send_id
from provisioner._core.models import Outcome, Status
from provisioner._pipeline.validate import forecast
from provisioner._state.opening import open_store
from provisioner.api import run_pipeline
from provisioner.sandbox.server import Sandbox

from .helpers import outputs, settings_for, write_csv

_CID = "c000000"
_FLAGS: dict[str, dict[str, object]] = {
    "none": {},
    "force": {"force": True},
    "retry_in_doubt": {"retry_in_doubt": True},
    "derive_send_ids": {"derive_send_ids": "mig"},
}


async def _leave_prior(state: Path, label: str, key: tuple[str, str], prior: str) -> None:
    """An earlier run's trace of the row: created, an open intent (a kill mid-request), or
    a recorded doubt."""
    store = open_store(state)
    try:
        store.begin_run("earlier", "m.csv", 1.0, None, {})
        send_id = key[1][2:] if key[1].startswith("s:") else None
        if prior == "created":
            outcome = Outcome(2, Status.CREATED, _CID, send_id or "braze-made")
            store.record("earlier", label, key, outcome)
        elif prior == "open_intent":
            await store.intent("earlier", label, key, send_id, 2)
        elif prior == "in_doubt":
            outcome = Outcome(2, Status.FAILED, _CID, send_id, error="in_doubt")
            store.record("earlier", label, key, outcome)
        await store.flush()
    finally:
        store.close()


@pytest.mark.parametrize("flag", list(_FLAGS))
@pytest.mark.parametrize("prior", ["none", "created", "open_intent", "in_doubt"])
@pytest.mark.parametrize("has_send_id", [True, False], ids=["send_id", "no_send_id"])
async def test_validate_counts_what_run_does(
    sandbox: Sandbox, tmp_path: Path, has_send_id: bool, prior: str, flag: str
) -> None:
    """validate's to_send / already_provisioned / in_doubt equal run's created / skipped /
    in_doubt rows and its requests, whatever the row's identity, prior and flag."""
    manifest = write_csv(tmp_path / "m.csv", [(_CID, "s1" if has_send_id else "")])
    settings = settings_for(sandbox.url, tmp_path, manifest, **_FLAGS[flag])
    if has_send_id:
        key = (_CID, "s:s1")
    elif flag == "derive_send_ids":
        key = (_CID, "s:" + derive_send_id("mig", _CID, 1))
    else:
        key = (_CID, "n:1")
    if prior != "none":
        await _leave_prior(tmp_path / "state.sqlite3", settings.workspaces[0].api_key.label,
                           key, prior)  # fmt: skip
    # In a thread: the campaign check lists the sandbox, which serves on this loop.
    report = (await asyncio.to_thread(forecast, settings)).to_dict()
    await run_pipeline(settings)
    results, failures, deferred, _ = outputs(tmp_path / "out")
    done = {
        "to_send": sum(r["status"] == "created" for r in results),
        "already_provisioned": sum(r["status"] == "skipped" for r in results),
        "in_doubt": sum(f["error"] == "in_doubt" for f in failures),
    }
    assert {k: report[k] for k in done} == done
    assert sandbox.ledger.total == report["to_send"]
    assert len(failures) == done["in_doubt"]
    assert not deferred
