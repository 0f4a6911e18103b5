"""A group's workers and plain runs on one PostgreSQL store: a workspace is worked by a
group (any number of its workers) or by one plain run, never by both at once; a dead
holder's lease expires as usual, and ``--lock-wait`` waits for either kind."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest

from provisioner._state.opening import open_store
from provisioner._state.postgres_group import worker_leases
from provisioner.errors import StateLockedError
from provisioner.sandbox.server import Sandbox

from .helpers import campaigns, settings_for, write_csv
from .test_cli import provisioner
from .test_group import config, worker_args

WS = "ws-main"


def expire(url: str, pattern: str) -> None:
    """What a kill -9 leaves once the lease length has passed: the rows expired, held."""
    with psycopg.connect(url) as conn:
        conn.execute(
            "UPDATE provisioner.leases SET expires_at = 0 WHERE workspace LIKE %s", (pattern,)
        )


def test_group_workers_share_a_workspace_a_plain_run_is_refused(pg_url: str) -> None:
    """Two workers of group g1 hold ws-main together; a plain run on ws-main is refused
    (exit 75) naming the group and saying to join it with --group; a plain run on
    another workspace is not; once the workers' leases expire the plain run takes over."""
    first = open_store(pg_url, workspaces=worker_leases("g1", "w1", [WS]))
    second = open_store(pg_url, workspaces=worker_leases("g1", "w2", [WS]))
    with pytest.raises(StateLockedError) as refused:
        open_store(pg_url, workspaces=[WS])
    message = str(refused.value)
    assert "workspace 'ws-main' is being worked by group 'g1' (worker w" in message
    assert "run with --group g1 to join it" in message
    assert refused.value.holder["group"] == "g1"
    other = open_store(pg_url, workspaces=["ws-other"])
    other.close()
    first.close()
    with pytest.raises(StateLockedError, match="worker w2"):
        open_store(pg_url, workspaces=[WS])  # one live worker is enough
    expire(pg_url, f"{WS}:group:g1:w2")  # the second worker died; its lease ran out
    plain = open_store(pg_url, workspaces=[WS])
    plain.close()
    second.close()


def test_a_group_worker_is_refused_on_a_workspace_a_plain_run_holds(pg_url: str) -> None:
    """A plain run holds ws-main: a group worker on it is refused (exit 75) naming the
    run and what to do, one on ws-other alone is not; --lock-wait waits for the plain
    run's release, and a dead plain run's lease is taken over once expired."""
    plain = open_store(pg_url, workspaces=[WS])
    plain.begin_run("plain-run-1", "m.csv", 0.0, None, {})
    with pytest.raises(StateLockedError) as refused:
        open_store(pg_url, workspaces=worker_leases("g1", "w1", [WS, "ws-other"]))
    message = str(refused.value)
    assert "workspace 'ws-main' is in use by a run without --group (host" in message
    assert "wait for that run to finish" in message
    alone = open_store(pg_url, workspaces=worker_leases("g1", "w2", ["ws-other"]))
    alone.close()
    threading.Timer(0.2, plain.close).start()
    waited = open_store(pg_url, workspaces=worker_leases("g1", "w3", [WS]), lock_wait=30)
    waited.close()
    dead = open_store(pg_url, workspaces=[WS])
    expire(pg_url, WS)
    taker = open_store(pg_url, workspaces=worker_leases("g1", "w4", [WS]))
    taker.close()
    dead.close()


async def test_the_cli_refuses_either_way_with_exit_75(
    sandbox: Sandbox, tmp_path: Path, pg_url: str
) -> None:
    """From the command line: a plain run on a workspace a group worker holds exits 75
    naming the group; a group worker on a workspace a plain run holds exits 75 too;
    neither sends anything."""
    manifest = write_csv(tmp_path / "m.csv", campaigns(3))
    label = settings_for(sandbox.url, tmp_path, manifest).workspaces[0].api_key.label
    worker = open_store(pg_url, workspaces=worker_leases("g1", "w1", [label]))
    try:
        code, _out, err = await provisioner(
            "run", str(manifest), "--out", str(tmp_path / "plain"), "--base-url",
            sandbox.url, "--state", pg_url, "--rate", "5000",
        )  # fmt: skip
    finally:
        worker.close()
    assert code == 75, err
    assert "is being worked by group 'g1'" in err
    plain = open_store(pg_url, workspaces=[label])
    try:
        args = worker_args(sandbox, manifest, tmp_path / "w", pg_url, config(tmp_path, 100))
        code, _out, err = await provisioner(*args)
    finally:
        plain.close()
    assert code == 75, err
    assert "in use by a run without --group" in err
    assert sandbox.ledger.total == 0


def test_one_holder_may_take_a_workspace_and_its_markers(pg_url: str) -> None:
    """One acquisition of a workspace's row and of group markers on it (``state copy``
    takes every lease row a store names) does not refuse itself, and excludes both kinds."""
    both = open_store(pg_url, workspaces=[WS, *worker_leases("g1", "w1", [WS])])
    with pytest.raises(StateLockedError, match="in use by another run"):
        open_store(pg_url, workspaces=[WS])
    with pytest.raises(StateLockedError, match="in use by a run without --group"):
        open_store(pg_url, workspaces=worker_leases("g1", "w2", [WS]))
    both.close()
