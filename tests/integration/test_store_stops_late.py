"""A store that stops once every row is queued: the run ends with the store's error
instead of waiting for ever to queue the workers' sentinels behind their full queue."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from provisioner._core.identity import RowKey
from provisioner._core.models import Outcome
from provisioner._state.opening import open_store
from provisioner.api import run_pipeline
from provisioner.errors import StateError
from tests.conftest import SandboxFactory

from .helpers import campaigns, settings_for, write_csv


async def test_workers_failing_after_the_reader_is_done_end_the_run(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """Two workers, ten rows (the reader is done at once, the queue full), and a store
    refusing every outcome (as a PostgreSQL store whose lease lapsed): StateError."""
    sandbox = await sandbox_factory(latency_ms=200)
    manifest = write_csv(tmp_path / "m.csv", campaigns(10))
    settings = settings_for(sandbox.url, tmp_path, manifest, concurrency=2)
    store = open_store(tmp_path / "state.sqlite3")

    def refuse(run_id: str, workspace: str, key: RowKey | None, outcome: Outcome) -> None:
        raise StateError("the store stopped (test)")

    store.record = refuse  # type: ignore[method-assign]
    try:
        with pytest.raises(StateError, match="the store stopped"):
            await asyncio.wait_for(run_pipeline(settings, store=store), 30)
    finally:
        store.close()
