"""``--lock-wait S``: a run on a store another run holds waits up to S seconds for the
lock (SQLite's flock, PostgreSQL's workspace lease), logging whom it waits for, before
exiting 75."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import orjson
import pytest

from provisioner._state.opening import open_store
from provisioner.sandbox.server import Sandbox

from .helpers import campaigns, settings_for, start_cli, write_csv
from .test_cli import provisioner

HOLDER_RUN = "holder-run-1"


@pytest.fixture(params=["sqlite", "postgresql"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store a test's runs share: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "state.sqlite3")
    url: str = request.getfixturevalue("pg_url")
    return url


def hold(sandbox: Sandbox, tmp_path: Path, manifest: Path, state: str) -> object:
    """Open ``state`` as a run would (lock or lease on the run's workspace), begun as
    HOLDER_RUN."""
    label = settings_for(sandbox.url, tmp_path, manifest).workspaces[0].api_key.label
    store = open_store(state, workspaces=[label])
    store.begin_run(HOLDER_RUN, "m.csv", time.time(), None, {})
    return store


def args(sandbox: Sandbox, tmp_path: Path, manifest: Path, state: str, wait: str) -> list[str]:
    return [
        "run", str(manifest), "--out", str(tmp_path / "out"), "--base-url", sandbox.url,
        "--state", state, "--rate", "5000", "--log-format", "json", "--lock-wait", wait,
    ]  # fmt: skip


def events(err: str, name: str) -> list[dict[str, object]]:
    lines = [orjson.loads(line) for line in err.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == name]


async def test_a_lock_released_within_the_wait_lets_the_run_proceed(
    sandbox: Sandbox, tmp_path: Path, state: str
) -> None:
    """--lock-wait 10 on a store released 1 s after the run began to wait: the run logs
    state_lock_wait naming the holder (host, pid, run id), then runs to the end (exit 0)."""
    manifest = write_csv(tmp_path / "m.csv", campaigns(3))
    holder = hold(sandbox, tmp_path, manifest, state)
    proc = await start_cli(*args(sandbox, tmp_path, manifest, state, "10"))
    assert proc.stderr is not None
    seen: list[bytes] = []
    try:
        while b"state_lock_wait" not in (seen[-1] if seen else b""):
            seen.append(await asyncio.wait_for(proc.stderr.readline(), 60))
            assert seen[-1], b"".join(seen)  # the run ended without waiting
        await asyncio.sleep(1.0)  # the holder keeps it a second longer
    finally:
        holder.close()  # type: ignore[attr-defined]
    _, rest = await proc.communicate()
    code, err = proc.returncode, (b"".join(seen) + rest).decode()
    assert code == 0, err
    (waiting,) = events(err, "state_lock_wait")
    assert waiting["holder_pid"] == os.getpid()
    assert waiting["holder_run_id"] == HOLDER_RUN
    assert waiting["holder_host"]
    assert waiting["wait_s"] == 10
    assert events(err, "state_lock_acquired")
    assert len(sandbox.ledger.created) == 3


async def test_a_lock_held_past_the_wait_exits_75(
    sandbox: Sandbox, tmp_path: Path, state: str
) -> None:
    """--lock-wait 1 on a store held longer: exit 75 after the wait, saying it waited,
    and nothing sent."""
    manifest = write_csv(tmp_path / "m.csv", campaigns(3))
    holder = hold(sandbox, tmp_path, manifest, state)
    try:
        code, _, err = await provisioner(*args(sandbox, tmp_path, manifest, state, "1"))
    finally:
        holder.close()  # type: ignore[attr-defined]
    assert code == 75, err
    assert events(err, "state_lock_wait")
    assert "in use by another run" in err
    assert f"run {HOLDER_RUN}" in err
    assert "waited 1 s (--lock-wait)" in err
    assert sandbox.ledger.total == 0
