"""A group worker killed with quota units reserved: once its lease has expired, the units
it reserved and never armed come back to the window for the other workers; the ones it
armed (which it may have spent) stay counted, so the window is never over-spent."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import orjson
import psycopg

from provisioner._state.opening import open_store
from provisioner._state.postgres import connect
from provisioner._state.postgres_group import Fingerprint, GroupHandle, worker_leases
from provisioner._state.postgres_schema import parse_location
from provisioner.sandbox.server import Sandbox
from tests.conftest import SandboxFactory

from .helpers import start_cli, write_csv
from .test_group import check_ledger, config, finish, worker_args

WS = "ws-main"


def worker(url: str, name: str, manifest: Path) -> tuple[Any, GroupHandle]:
    """A group worker's store (its leases held) and its handle on group g1, joined."""
    store: Any = open_store(url, workspaces=worker_leases("g1", name, [WS]))
    handle = GroupHandle(connect(parse_location(url)), parse_location(url), "g1", name, 50)
    handle.quota.holder = store._lease.holder
    handle.join(str(manifest), Fingerprint.of(str(manifest)), 50, time.time())
    return store, handle


def test_only_a_lapsed_workers_unarmed_units_come_back_once(tmp_path: Path, pg_url: str) -> None:
    """The window's accounting, step by step: a live worker's reservation is never taken
    back; once a worker's lease has lapsed it can arm nothing more, and the next
    reservation returns exactly its reserved-but-unarmed units (its armed ones, which it
    may have spent, stay counted), once; what it gives back afterwards changes nothing."""
    manifest = write_csv(tmp_path / "m.csv", [("c1", "s1")])
    dead_store, dead = worker(pg_url, "dead", manifest)
    live_store, live = worker(pg_url, "live", manifest)
    key = time.time() + 3600
    # (granted, armed, reclaimed); the first reservation counts the window's probe too.
    assert dead.quota.top_up(WS, key, 100, 100, 1, 16, 8) == (16, 8, 0)
    assert live.quota.top_up(WS, key, 100, 100, 0, 16, 8) == (16, 8, 0)  # dead is live
    assert window(pg_url) == (100, 33)
    with psycopg.connect(pg_url) as conn:  # what a kill -9 leaves once lease_s has passed
        conn.execute(
            "UPDATE provisioner.leases SET expires_at = 0 WHERE workspace LIKE '%%:dead%%'"
        )
    assert dead.quota.top_up(WS, key, 100, 100, 0, 0, 8) == (0, 0, 0)  # fenced: no arm
    assert live.quota.top_up(WS, key, 100, 100, 0, 16, 0) == (16, 0, 8)
    assert window(pg_url) == (100, 1 + 8 + 32)  # the probe, dead's armed, live's reserved
    assert live.quota.top_up(WS, key, 100, 100, 0, 16, 0) == (16, 0, 0)  # back once only
    dead.quota.give_back(WS, key, 0, 8)  # a paused worker waking: its spare is gone
    assert window(pg_url) == (100, 1 + 8 + 48)
    assert reservations(pg_url) == [("dead", 8, 8), ("live", 48, 8)]
    live.quota.give_back(WS, key, 8, 40)  # a live worker's own unused units, all of them
    assert window(pg_url) == (100, 1 + 8)
    for store, handle in ((dead_store, dead), (live_store, live)):
        handle.close()
        store.close()


def reservations(url: str) -> list[tuple[str, int, int]]:
    """(worker, reserved, armed) of every reservation, with the window's row."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT worker, reserved, armed FROM provisioner.group_reservations ORDER BY 1"
        ).fetchall()
    return [(str(w), int(r), int(a)) for w, r, a in rows]


def window(url: str) -> tuple[int, int]:
    """(ceiling, taken) of the one window the test's workers use."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT ceiling, taken FROM provisioner.group_quota").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def kill_holding_spare_units(proc: asyncio.subprocess.Process, url: str) -> None:
    """SIGKILL the worker at a moment its reservation holds units it has not armed: it is
    stopped (SIGSTOP) and looked at until it does."""
    for _ in range(500):
        os.kill(proc.pid, signal.SIGSTOP)
        rows = reservations(url)
        if rows and rows[0][1] > rows[0][2]:
            os.kill(proc.pid, signal.SIGKILL)
            await finish(proc)
            return
        os.kill(proc.pid, signal.SIGCONT)
        await asyncio.sleep(0.02)
    raise AssertionError(f"the worker never held unarmed units: {reservations(url)}")


async def wait_for_expiry(url: str) -> None:
    """Until no worker's lease is live (the dead one's has run out)."""
    for _ in range(2000):
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM provisioner.leases WHERE workspace LIKE 'group:%%'"
                " AND holder IS NOT NULL AND expires_at > extract(epoch FROM clock_timestamp())"
            ).fetchone()
        if row is not None and row[0] == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the dead worker's lease never expired")


async def test_a_dead_workers_unarmed_units_come_back_after_its_lease_expires(
    sandbox_factory: SandboxFactory, tmp_path: Path, pg_url: str
) -> None:
    """A worker killed -9 holding units it reserved but had not armed: after its lease
    expired, the next worker's reservation returns exactly those to the window (logged as
    quota_reclaimed) and uses them, more than the window would have left it otherwise;
    the dead worker's armed units stay counted; the window ends spent, every unit of it
    accounted for, and no window of the ledger holds more than the quota."""
    quota = 100
    sandbox: Sandbox = await sandbox_factory(daily_quota=quota, window_seconds=3600)
    rows = [(f"c{i:04d}", f"s{i:04d}") for i in range(250)]
    manifest = write_csv(tmp_path / "m.csv", rows)
    url = pg_url + "?lease_s=1"
    cfg = config(tmp_path, 50)
    slow = ("--rate", "20", "--concurrency", "16", "--max-wait", "1")  # 16 reserved at a time
    first = await start_cli(*worker_args(sandbox, manifest, tmp_path / "w0", url, cfg), *slow)
    for _ in range(3000):
        if len(sandbox.ledger.created) >= 20:
            break
        await asyncio.sleep(0.01)
    await kill_holding_spare_units(first, pg_url)
    [(dead, reserved, armed)] = reservations(pg_url)
    spare = reserved - armed
    await wait_for_expiry(pg_url)
    by_dead = len(sandbox.ledger.created)  # everything it sent has landed by now
    ceiling, taken = window(pg_url)
    probes = taken - reserved  # the window's units not in a reservation: the first probe
    args = worker_args(sandbox, manifest, tmp_path / "w1", url, cfg)
    code, err = await finish(
        await start_cli(*args, "--rate", "5000", "--concurrency", "2", "--max-wait", "1")
    )
    assert code == 3, err[-2000:]  # the window is spent: the rest is deferred
    events = [orjson.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert sum(e["units"] for e in events if e.get("event") == "quota_reclaimed") == spare
    after = {w: (r, a) for w, r, a in reservations(pg_url)}
    assert after[dead] == (armed, armed)  # its spare units went back, its armed ones did not
    ceiling_after, taken_after = window(pg_url)
    assert ceiling_after == ceiling == quota
    # Every unit of the window is accounted for: the probe, and the armed units of both
    # workers (the live one gave back what it did not use).
    assert all(r == a for r, a in after.values())
    assert taken_after == probes + sum(a for _r, a in after.values())
    by_second = len(sandbox.ledger.created) - by_dead
    # Without the reclaim the second worker could have had ceiling - probes - reserved at
    # most; with it, all the units but the dead worker's armed ones, less a unit for each
    # row of the dead worker's in flight that it resends (created already: no new entry).
    assert by_second > ceiling - probes - reserved
    assert by_second >= ceiling - probes - armed - 16
    check_ledger(sandbox, quota)
    print(  # the figures (pytest -s shows them)
        f"dead worker: reserved {reserved}, armed {armed}, {spare} came back; ledger "
        f"{by_dead} + {by_second} created of {quota}"
    )
