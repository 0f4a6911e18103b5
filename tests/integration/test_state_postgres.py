"""The PostgreSQL state store end to end: the CLI against the sandbox with
``--state postgresql://...`` on a throwaway server (tests/pg_server.py), its schema and
refusals, its fail-stop, and the password kept out of everything the tool shows."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import psycopg
import pytest

from provisioner._config.settings import build_settings
from provisioner._core.models import Outcome, Status
from provisioner._core.redact import redact_url
from provisioner._state import postgres_schema as pg_schema
from provisioner._state.opening import open_store
from provisioner._state.postgres_schema import parse_location
from provisioner._state.store import SqliteStateStore
from provisioner.errors import StateError, StateLockedError
from provisioner.sandbox.server import Sandbox
from tests.pg_server import PASSWORD, ROLE, PgServer

from .helpers import ROOT, campaigns, settings_for, write_csv
from .test_cli import provisioner

WS = "ws-main"


def run_args(sandbox: Sandbox, out: Path, manifest: Path, state: str, *extra: str) -> list[str]:
    return [
        "run", str(manifest), "--out", str(out), "--base-url", sandbox.url, "--state", state,
        "--rate", "5000", "--log-level", "debug", *extra,
    ]  # fmt: skip


def no_password(*texts: str | bytes) -> None:
    for text in texts:
        data = text if isinstance(text, bytes) else text.encode()
        assert PASSWORD.encode() not in data


def tree_has_no_password(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path


async def test_run_resume_skip_status_export_validate(
    sandbox: Sandbox, tmp_path: Path, pg_url: str
) -> None:
    """Every command works on --state postgresql://: a run creates, the next run skips
    what the database remembers, status and export read it, validate forecasts from it;
    the password shows in none of their output, logs (debug) or files."""
    manifest = write_csv(tmp_path / "m.csv", campaigns(12))
    code, out, err = await provisioner(*run_args(sandbox, tmp_path / "o1", manifest, pg_url))
    assert code == 0, err
    no_password(out, err)
    assert len(sandbox.ledger.created) == 12
    code, out, err = await provisioner(*run_args(sandbox, tmp_path / "o2", manifest, pg_url))
    assert code == 0, err
    no_password(out, err)
    assert len(sandbox.ledger.created) == 12  # nothing sent twice: the shared store remembered
    summary = orjson.loads((tmp_path / "o2" / "summary.json").read_bytes())
    assert summary["counts"]["skipped"] == 12
    with psycopg.connect(pg_url) as conn:
        stored = conn.execute("SELECT settings FROM provisioner.runs").fetchall()
    assert len(stored) == 2
    assert redact_url(pg_url) in stored[0][0]
    no_password(*(row[0] for row in stored))
    code, out, err = await provisioner("status", "--state", pg_url, "--json")
    assert code == 0, err
    no_password(out, err)
    runs = orjson.loads(out)["runs"]
    assert len(runs) == 2
    code, out, err = await provisioner(
        "export", "--run", summary["run_id"], "--out", str(tmp_path / "again"), "--state", pg_url
    )
    assert code == 0, err
    no_password(out, err)
    again = orjson.loads((tmp_path / "again" / "summary.json").read_bytes())
    assert again["counts"] == summary["counts"]
    code, out, err = await provisioner("validate", str(manifest), "--state", pg_url)
    assert code == 0, err
    no_password(out, err)
    tree_has_no_password(tmp_path)


async def test_unreachable_database_stops_before_sending(
    sandbox: Sandbox, tmp_path: Path, pg_server: PgServer
) -> None:
    """A database that cannot be reached at start: exit 2, one line naming the database
    without its password, and nothing sent."""
    manifest = write_csv(tmp_path / "m.csv", campaigns(3))
    url = f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:1/nowhere"
    code, out, err = await provisioner(*run_args(sandbox, tmp_path / "o", manifest, url))
    assert code == 2
    assert "postgresql://prov@127.0.0.1:1/nowhere" in err
    no_password(out, err)
    assert sandbox.ledger.total == 0
    bad = pg_server.url("postgres").replace(PASSWORD, "S3cr3t-wrong-one")
    code, out, err = await provisioner(*run_args(sandbox, tmp_path / "o", manifest, bad))
    assert code == 2
    assert "password authentication failed" in err
    assert "S3cr3t-wrong-one" not in err + out
    tree_has_no_password(tmp_path)


def test_password_file_and_redaction(tmp_path: Path, pg_server: PgServer) -> None:
    """?password_file= supplies the password; the URL shown never holds one."""
    pg_server.create_database("pwfile")
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD + "\n")
    url = pg_server.url("pwfile", password=False) + f"?password_file={secret}"
    store = open_store(url, lock=False)
    assert PASSWORD not in str(store.path)
    store.close()
    assert redact_url("postgresql://u:p%40ss@h:5/d?password=x&sslmode=require") == (
        "postgresql://u@h:5/d?sslmode=require"
    )
    with pytest.raises(StateError, match="cannot read password_file"):
        parse_location(pg_server.url("pwfile", password=False) + "?password_file=/nope")


def test_tables_live_in_their_schema_with_a_version(pg_url: str) -> None:
    """The tables are created in schema `provisioner` (or ?schema=) with a version row."""
    open_store(pg_url, lock=False).close()
    open_store(pg_url + "?schema=other_one", lock=False).close()
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT table_schema, count(*) FROM information_schema.tables"
            " WHERE table_schema IN ('provisioner', 'other_one') GROUP BY 1 ORDER BY 1"
        ).fetchall()
        assert rows == [("other_one", 7), ("provisioner", 7)]
        meta: dict[str, str] = dict(
            conn.execute("SELECT name, value FROM provisioner.meta").fetchall()
        )
    assert meta == {"application": "provisioner", "version": str(pg_schema.schema_version())}


def test_newer_and_foreign_schemas_are_refused(pg_url: str) -> None:
    """A schema written by a newer provisioner, or another application's tables: StateError
    (exit 2) naming the database without its password."""
    open_store(pg_url, lock=False).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE provisioner.meta SET value = '99' WHERE name = 'version'")
        conn.execute("CREATE SCHEMA theirs")
        conn.execute("CREATE TABLE theirs.orders (id int)")
    with pytest.raises(StateError, match="schema version 99, newer") as newer:
        open_store(pg_url)
    with pytest.raises(StateError, match="another application's") as foreign:
        open_store(pg_url + "?schema=theirs")
    for exc in (newer, foreign):
        assert PASSWORD not in str(exc.value)


def test_two_hosts_creating_the_schema_at_once(pg_url: str) -> None:
    """Eight openers on an empty database at once: one creates the schema, all succeed."""
    errors: list[BaseException] = []

    def opener() -> None:
        try:
            open_store(pg_url, lock=False).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


async def test_failed_write_stops_the_store(pg_url: str) -> None:
    """A write the database refuses makes the store fail-stop, with a redacted message."""
    store = open_store(pg_url)
    store.begin_run("run-1", "m", 1.0, None, {})
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION provisioner.boom() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'disk on fire'; END $$"
        )
        conn.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON provisioner.outcomes"
            " FOR EACH ROW EXECUTE FUNCTION provisioner.boom()"
        )
    store.record("run-1", WS, ("c", "s:a"), Outcome(1, Status.CREATED, "c", "a"))
    with pytest.raises(StateError, match=r"disk on fire.*run again") as exc:
        await store.flush()
    assert PASSWORD not in str(exc.value)
    with pytest.raises(StateError):
        await store.intent("run-1", WS, ("c", "s:b"), "b", 3)
    store.close()
    assert open_store(pg_url, lock=False).lookup_many(WS, [("c", "s:a")]) == {}


async def test_database_stopped_mid_run_fails_stop(pg_url: str, pg_server: PgServer) -> None:
    """The server going away: the next commit fails, the store refuses every later write
    (nothing is sent unrecorded), the message names the database without its password."""
    store = open_store(pg_url)
    store.begin_run("run-1", "m", 1.0, None, {})
    await store.intent("run-1", WS, ("c", "s:a"), "a", 1)
    pg_server.stop()
    try:
        with pytest.raises(StateError, match=r"postgresql://prov@127\.0\.0\.1") as exc:
            await asyncio.wait_for(store.intent("run-1", WS, ("c", "s:b"), "b", 2), 30)
        assert PASSWORD not in str(exc.value)
        with pytest.raises(StateError):
            store.record("run-1", WS, None, Outcome(3, Status.DEFERRED, None, None))
        store.close()
    finally:
        pg_server.start()
    # The lease could not be released (the server was gone): it expires on its own.
    again = open_store(pg_url, lock=False)
    assert again.lookup_many(WS, [("c", "s:a")])["c", "s:a"].kind == "in_flight"
    again.close()


# -- leases: two runs, two processes

CHILD = """
import asyncio, sys, time
from provisioner._config.settings import build_settings
from provisioner._core.models import Outcome, Status
from provisioner._state.opening import open_store
from provisioner._state.store import SqliteStateStore
from provisioner.errors import StateError, StateLockedError

async def main():
    store = open_store(sys.argv[1], workspaces=["ws-main"])
    store.begin_run("child", "m", 1.0, None, {})
    await store.intent("child", "ws-main", ("c", "s:a"), None, 1)
    print("ready", flush=True)
    sys.stdin.readline()  # the parent says when to go on
    try:
        store.record("child", "ws-main", ("c", "s:b"), Outcome(2, Status.CREATED, "c", "b"))
        await store.flush()
        print("wrote", flush=True)
    except StateError as exc:
        print("refused:", exc, flush=True)
    try:
        store.close()
    except StateError:
        pass

asyncio.run(main())
"""


def child(url: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def open_when_expired(url: str) -> SqliteStateStore:
    """Open the store for ws-main as soon as the other holder's lease has expired."""
    for _ in range(200):
        try:
            return open_store(url, workspaces=["ws-main"])
        except StateLockedError:
            time.sleep(0.05)
    raise AssertionError("the lease never expired")


def test_one_run_per_workspace_other_workspaces_run_alongside(pg_url: str) -> None:
    """A second writer on a workspace is refused (exit 75) naming the holder; a writer on
    another workspace of the same database runs at the same time; a release frees it."""
    first = open_store(pg_url, workspaces=["ws-main"])
    with pytest.raises(StateLockedError, match=r"'ws-main' is in use by another run \(host"):
        open_store(pg_url, workspaces=["ws-main", "ws-other"])
    other = open_store(pg_url, workspaces=["ws-other"])
    other.close()
    first.close()
    again = open_store(pg_url, workspaces=["ws-main"])
    assert again.took_over_from is None  # a clean hand-over, not a takeover
    again.close()


async def test_second_cli_run_on_a_held_workspace_exits_75(
    sandbox: Sandbox, tmp_path: Path, pg_url: str
) -> None:
    """The CLI on a workspace whose lease another run holds exits 75, sending nothing."""
    manifest = write_csv(tmp_path / "m.csv", campaigns(3))
    label = settings_for(sandbox.url, tmp_path, manifest).workspaces[0].api_key.label
    holder = open_store(pg_url, workspaces=[label])
    try:
        code, out, err = await provisioner(*run_args(sandbox, tmp_path / "o", manifest, pg_url))
    finally:
        holder.close()
    assert code == 75, err
    assert "in use by another run" in err
    assert sandbox.ledger.total == 0
    no_password(out, err)


def test_a_dead_holders_lease_is_taken_over_after_it_expires(pg_url: str) -> None:
    """kill -9 of the holder: its lease blocks others until it expires, then the next run
    takes over, names the dead holder, and sees its unsettled intent."""
    url = pg_url + "?lease_s=1"
    proc = child(url)
    pid = proc.pid
    os.kill(pid, signal.SIGKILL)
    proc.wait()
    with pytest.raises(StateLockedError):
        open_store(url, workspaces=["ws-main"])
    store = open_when_expired(url)
    assert store.took_over_from is not None
    assert store.took_over_from[0] == pid
    assert store.lookup_many(WS, [("c", "s:a")])["c", "s:a"].kind == "in_flight"
    store.close()


def test_a_paused_holder_is_fenced_when_it_wakes(pg_url: str) -> None:
    """SIGSTOP past the lease, another run takes over, SIGCONT: the first commits nothing
    more and says why."""
    url = pg_url + "?lease_s=1"
    proc = child(url)
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        taker = open_when_expired(url)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    out, _ = proc.communicate("go\n", timeout=60)
    taker.close()
    assert "refused:" in out
    assert "expired or was taken over" in out
    assert PASSWORD not in out
    reader = open_store(url, lock=False)
    assert reader.lookup_many(WS, [("c", "s:b")]) == {}
    reader.close()


def test_state_url_in_the_config_file(tmp_path: Path) -> None:
    """[state] url names the store; PROVISIONER_STATE and --state override it."""
    config = tmp_path / "c.toml"
    config.write_text('[state]\nurl = "postgresql://u@h/db"\n')
    env = {"BRAZE_API_KEY": "k"}

    def state(cli: dict[str, object], env: dict[str, str]) -> str | None:
        settings = build_settings(
            manifest="m.csv", out_dir=tmp_path, cli=cli, env=env, config_path=config
        )
        return settings.state_path

    assert state({}, env) == "postgresql://u@h/db"
    assert state({}, {**env, "PROVISIONER_STATE": "/x.db"}) == "/x.db"
    assert state({"state_path": "postgres://a@b/c"}, env) == "postgres://a@b/c"
