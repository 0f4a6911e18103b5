"""Whole `provisioner run`s on the PostgreSQL store: text PostgreSQL cannot hold (NUL),
derived send_ids, two workspaces' runs at once, and the database lost mid-run and back."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from provisioner._core.models import Outcome, Status
from provisioner._core.redact import redact_url
from provisioner._state import postgres_schema as pg_schema
from provisioner._state.opening import open_store
from provisioner.errors import StateError
from provisioner.sandbox.server import Sandbox
from tests.conftest import SandboxFactory
from tests.pg_server import PgServer

from .helpers import campaigns, cli_env, read_jsonl, start_cli, wait_for_created, write_csv
from .test_cli import provisioner
from .test_state_postgres import WS, no_password, run_args


@pytest.fixture(params=["sqlite", "postgresql"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A --state of each backend: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "state.sqlite3")
    url: str = request.getfixturevalue("pg_url")
    return url


def output_files(out: Path) -> dict[str, bytes]:
    """The run's output files (summary without its timings and run-specific fields)."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name != "summary.json"}


async def test_nul_in_manifest_text_fails_only_its_row(
    sandbox: Sandbox, tmp_path: Path, state: str
) -> None:
    """A NUL (U+0000) in a campaign_id or a pass-through column behaves the same on both
    backends: that row fails as control_character, the others proceed (exit 1), and
    export writes the run's files again byte for byte, NUL kept."""
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(b"campaign_id,send_id,note\nc\x00x,s1,a\nc2,s2,b\x00c\n")
    code, out, err = await provisioner(*run_args(sandbox, tmp_path / "o", manifest, state))
    assert code == 1, err
    no_password(out, err)
    failures = read_jsonl(tmp_path / "o" / "failures.jsonl")
    assert [(f["campaign_id"], f["error"]) for f in failures] == [("c\x00x", "control_character")]
    results = read_jsonl(tmp_path / "o" / "results.jsonl")
    assert [(r["campaign_id"], r["note"]) for r in results] == [("c2", "b\x00c")]
    assert len(sandbox.ledger.created) == 1
    run_id = orjson.loads((tmp_path / "o" / "summary.json").read_bytes())["run_id"]
    code, out, err = await provisioner(
        "export", "--run", run_id, "--out", str(tmp_path / "again"), "--state", state
    )
    assert code == 0, err
    assert output_files(tmp_path / "again") == output_files(tmp_path / "o")


@pytest.mark.parametrize(
    "damage",
    [
        "DROP TABLE provisioner.outcomes",
        "ALTER TABLE provisioner.created DROP COLUMN send_id",
        "ALTER TABLE provisioner.intents RENAME COLUMN line TO row_line",
        "UPDATE provisioner.meta SET value = 'two' WHERE name = 'version'",
        "DELETE FROM provisioner.meta WHERE name = 'version'",
    ],
)
async def test_a_corrupt_schema_is_refused_in_one_line(
    sandbox: Sandbox, tmp_path: Path, pg_url: str, damage: str
) -> None:
    """The tool's schema with a table or column missing, or a meta row that is garbage:
    run and status stop with one line naming what is wrong (exit 2, no traceback), and
    nothing is sent."""
    manifest = write_csv(tmp_path / "m.csv", campaigns(2))
    code, out, err = await provisioner(*run_args(sandbox, tmp_path / "o1", manifest, pg_url))
    assert code == 0, err
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(damage)
    before = sandbox.ledger.total
    manifest = write_csv(tmp_path / "m2.csv", campaigns(2, prefix="d"))
    for args in (
        run_args(sandbox, tmp_path / "o2", manifest, pg_url),
        ["status", "--state", pg_url],
    ):
        code, out, err = await provisioner(*args)
        assert code == 2, err
        assert "Traceback" not in err
        lines = [line for line in err.splitlines() if line.startswith("provisioner: error")]
        assert len(lines) == 1, err
        assert "schema" in lines[0]
        no_password(out, err)
    assert sandbox.ledger.total == before


def test_the_expected_columns_are_those_a_fresh_schema_has(pg_url: str) -> None:
    """The damage check's list of tables and columns is exactly what the migrations make."""
    open_store(pg_url, lock=False).close()
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = 'provisioner'"
        ).fetchall()
    found: dict[str, set[str]] = {}
    for table, column in rows:
        found.setdefault(table, set()).add(column)
    assert found == {t: set(c) for t, c in pg_schema._EXPECTED.items()}


def created_twice(sandbox: Sandbox) -> list[tuple[str, str]]:
    """The (campaign_id, send_id) pairs the sandbox created more than once."""
    pairs = Counter((e.campaign_id, e.send_id) for e in sandbox.ledger.created)
    return [pair for pair, n in pairs.items() if n > 1]


async def test_derived_send_ids_on_postgresql(
    sandbox: Sandbox, tmp_path: Path, pg_url: str
) -> None:
    """--derive-send-ids on PostgreSQL: a run creates each row under its derived id, a
    rerun skips them all (the database remembers the derived keys), nothing twice."""
    manifest = write_csv(tmp_path / "m.csv", campaigns(6, with_send_id=False))
    derive = ("--derive-send-ids", "mig")
    code, _, err = await provisioner(*run_args(sandbox, tmp_path / "o1", manifest, pg_url, *derive))
    assert code == 0, err
    first = {r["campaign_id"]: r["send_id"] for r in read_jsonl(tmp_path / "o1" / "results.jsonl")}
    assert len(first) == 6
    assert all(first.values())
    code, _, err = await provisioner(*run_args(sandbox, tmp_path / "o2", manifest, pg_url, *derive))
    assert code == 0, err
    again = read_jsonl(tmp_path / "o2" / "results.jsonl")
    assert {r["campaign_id"]: r["send_id"] for r in again} == first
    assert {r["status"] for r in again} == {"skipped"}
    assert len(sandbox.ledger.created) == 6
    assert created_twice(sandbox) == []


async def test_two_workspaces_run_at_once_on_one_database(
    sandbox_factory: SandboxFactory, tmp_path: Path, pg_url: str
) -> None:
    """Two `provisioner run`s of two workspaces (two API keys) on one database at the
    same time: each holds only its own workspace's lease, so both finish (exit 0)."""
    sandbox = await sandbox_factory(api_keys=("key-one", "key-two"))
    runs = []
    for n, key in enumerate(("key-one", "key-two")):
        manifest = write_csv(tmp_path / f"m{n}.csv", campaigns(40, prefix=f"w{n}-"))
        # A slow rate (2 s of sending each) so that the two runs overlap.
        args = run_args(sandbox, tmp_path / f"o{n}", manifest, pg_url, "--rate", "20")
        runs.append(await start_cli(*args, env=cli_env({"BRAZE_API_KEY": key})))
    results = [await proc.communicate() for proc in runs]
    for proc, (_, run_err) in zip(runs, results, strict=True):
        assert proc.returncode == 0, run_err.decode()
    assert len(sandbox.ledger.created) == 80
    with psycopg.connect(pg_url) as conn:
        spans = conn.execute("SELECT started_at, finished_at FROM provisioner.runs").fetchall()
    (start_a, end_a), (start_b, end_b) = spans
    assert max(start_a, start_b) < min(end_a, end_b)  # the premise: the runs overlapped


async def test_database_stopped_during_a_run_then_back(
    sandbox_factory: SandboxFactory, tmp_path: Path, pg_server: PgServer
) -> None:
    """The server stopping under a real run: the run exits 2 with one line naming the
    database without its password; once the server is back, the same command finishes
    the work and nothing is created twice."""
    sandbox = await sandbox_factory(daily_quota=10_000)
    # A short lease: the stopped run could not release its own, it must expire.
    url = pg_server.create_database("stopped_mid_run") + "?lease_s=2"
    manifest = write_csv(tmp_path / "m.csv", campaigns(300))
    args = run_args(sandbox, tmp_path / "o1", manifest, url, "--rate", "100")
    proc = await start_cli(*args)
    try:
        assert await wait_for_created(sandbox, 20)
        pg_server.stop()
        _, err_bytes = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        pg_server.start()  # the session's server: other tests use it
    err = err_bytes.decode()
    assert proc.returncode == 2, err
    errors = [line for line in err.splitlines() if line.startswith("provisioner: error")]
    assert len(errors) == 1, err
    assert redact_url(url) in errors[0]
    no_password(err)
    assert len(sandbox.ledger.created) < 300
    again = run_args(sandbox, tmp_path / "o2", manifest, url, "--lock-wait", "30")
    code, _, err = await provisioner(*again)
    assert code == 0, err
    assert {(e.campaign_id, e.send_id) for e in sandbox.ledger.created} == set(campaigns(300))
    assert created_twice(sandbox) == []


def _stolen(url: str, store: Any) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "UPDATE provisioner.leases SET holder = 'thief', expires_at = expires_at + 600"
        )


def _connection_killed(url: str, store: Any) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (store._lease.conn.info.backend_pid,))


@pytest.mark.parametrize(
    ("lose", "reason"),
    [(_stolen, "taken over by another run"), (_connection_killed, "could not be renewed")],
)
async def test_a_lease_the_heartbeat_cannot_renew_stops_sending(
    pg_url: str, lose: Callable[[str, Any], None], reason: str
) -> None:
    """The heartbeat failing to renew the lease (another holder took it by SQL, or its
    connection was killed) fail-stops the store by itself, before any commit: the next
    intent (the step before a request leaves) is refused with that reason."""
    store = open_store(pg_url + "?lease_s=1.5", workspaces=[WS])  # a beat every 0.5 s
    store.begin_run("run-1", "m", 1.0, None, {})
    await store.intent("run-1", WS, ("c", "s:a"), "a", 1)
    lose(pg_url, store)
    for _ in range(200):  # a bound for a busy machine, not a time the test asserts
        if store._error is not None:
            break
        await asyncio.sleep(0.05)
    with pytest.raises(StateError, match=reason):
        await store.intent("run-1", WS, ("c", "s:b"), "b", 2)
    with pytest.raises(StateError):
        store.record("run-1", WS, None, Outcome(3, Status.DEFERRED, None, None))
    store.close()
    reader = open_store(pg_url, lock=False)
    assert list(reader.lookup_many(WS, [("c", "s:b")])) == []  # never recorded as sent
    reader.close()
