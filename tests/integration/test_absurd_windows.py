"""A stored quota window no server meant (a reset of 1e30, past year 9999, NaN), as an
older version stored it (issue 18 item 2): `provisioner status` on such a store ignores
it and exits 0, and a run's open drops it, on SQLite and on PostgreSQL alike."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from provisioner._cli import main as cli
from provisioner._state.opening import open_store
from provisioner._state.postgres_schema import parse_location

WS = "ws-absurd"
#: (workspace, reset_at) of the poisoned windows: 1e30, a day past year 9999 (SQLite
#: stores a NaN as NULL, which the column refuses; PostgreSQL takes NaN and Infinity).
ABSURD = [(WS, 1e30), ("ws-far", 253402300800.0 + 86400)]
PG_ABSURD = [*ABSURD, ("ws-nan", float("nan")), ("ws-inf", float("inf"))]


def _stored_run(location: Path | str) -> None:
    store = open_store(location)
    store.begin_run("run-1", "a.csv", 1.0, None, {})
    store.finish_run("run-1", 2.0, 0, {}, {})
    store.close()


def _sqlite_windows(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    conn = sqlite3.connect(path)
    try:
        with conn:
            return list(conn.execute(sql, params))
    finally:
        conn.close()


def _pg_windows(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    import psycopg

    schema = parse_location(url).schema
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql.replace("quota_windows", f"{schema}.quota_windows"), params)
        return list(cursor) if cursor.description else []


_INSERT = (
    "INSERT INTO quota_windows (workspace, reset_at, quota_limit, remaining, spent)"
    " VALUES (%s, %s, 100, 40, 3)"
)


def _status(capsys: pytest.CaptureFixture[str], location: str) -> dict[str, Any]:
    """`provisioner status` text and --json on the store: both exit 0; the JSON."""
    assert cli.main(["status", "--state", location]) == 0
    text = capsys.readouterr()
    assert "1e+30" not in text.out
    assert "Traceback" not in text.err
    assert cli.main(["status", "--state", location, "--json"]) == 0
    doc: dict[str, Any] = orjson.loads(capsys.readouterr().out)
    return doc


def test_status_ignores_an_absurd_window_in_a_sqlite_store_and_a_run_drops_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Windows inserted straight into the file: status exits 0 showing none of them (it
    reads only, so leaves them); opening the store for a run deletes them."""
    path = tmp_path / "state.sqlite3"
    _stored_run(path)
    for workspace, reset in ABSURD:
        _sqlite_windows(path, _INSERT.replace("%s", "?"), (workspace, reset))
    doc = _status(capsys, str(path))
    assert doc["quota"] == []
    assert [r["run_id"] for r in doc["runs"]] == ["run-1"]
    assert len(_sqlite_windows(path, "SELECT * FROM quota_windows")) == len(ABSURD)
    open_store(path).close()
    assert _sqlite_windows(path, "SELECT * FROM quota_windows") == []


def test_status_ignores_an_absurd_window_in_a_postgresql_store_and_a_run_drops_it(
    pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same on PostgreSQL: status exits 0 without them; a run's open (under its
    lease) deletes them, and a sane window is kept."""
    _stored_run(pg_url)
    for workspace, reset in PG_ABSURD:
        _pg_windows(pg_url, _INSERT, (workspace, reset))
    sane = time.time() + 3600  # a window a server could mean: kept
    _pg_windows(pg_url, _INSERT, ("ws-sane", sane))
    doc = _status(capsys, pg_url)
    assert [w["workspace"] for w in doc["quota"]] == ["ws-sane"]
    assert len(_pg_windows(pg_url, "SELECT workspace FROM quota_windows")) == len(PG_ABSURD) + 1
    open_store(pg_url, workspaces=(WS,)).close()
    assert _pg_windows(pg_url, "SELECT workspace FROM quota_windows") == [("ws-sane",)]
