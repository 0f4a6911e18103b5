"""Retention: which runs are pruned, what is always kept, and how the SQLite file shrinks."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from provisioner._core.models import Outcome, Status
from provisioner._outputs.report import export_run, format_status, status_report
from provisioner._state import schema as state_schema
from provisioner._state.opening import open_store
from provisioner._state.retention import DAY_S, Policy, Pruned
from provisioner._state.store import SqliteStateStore
from provisioner.errors import StateError

WS = "ws-main"
NOW = 1_000 * DAY_S  # the prunes' clock: run i starts (10 - i) * 10 days before it
ROWS = 50


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state.sqlite3"


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, path: Path) -> Path | str:
    """Each behaviour pinned once per backend (PostgreSQL: a throwaway server)."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return path


def outcome(line: int, status: Status, run: int) -> Outcome:
    campaign = f"c{line:04d}"
    send_id = f"s{line:04d}" if status is Status.CREATED else None
    return Outcome(line, status, campaign, send_id, (("campaign_id", campaign), ("n", str(run))))


async def add_run(
    location: Path | str,
    run: int,
    *,
    status: Status = Status.DEFERRED,
    finished: bool = True,
    rows: int = ROWS,
    started_at: float | None = None,
) -> None:
    """Run ``run-{run}``: ``rows`` outcomes of ``status``, started (10 - run) * 10 days ago."""
    store = open_store(location)
    try:
        run_id = f"run-{run}"
        start = NOW - (10 - run) * 10 * DAY_S if started_at is None else started_at
        store.begin_run(run_id, "m.csv", start, ("campaign_id", "n"), {"concurrency": 4})
        for line in range(1, rows + 1):
            o = outcome(line, status, run)
            store.record(run_id, WS, (f"c{line:04d}", f"s{line:04d}"), o)
        await store.flush()
        if finished:
            store.finish_run(run_id, start + 60, 3, {status.value: rows}, {"rows_total": rows})
    finally:
        store.close()


def prune(location: Path | str, policy: Policy, **options: Any) -> Pruned:
    store = open_store(location)
    try:
        return store.prune(policy, now=NOW, **options)
    finally:
        store.close()


@pytest.fixture
def reader(location: Path | str) -> Iterator[SqliteStateStore]:
    store = open_store(location, lock=False)
    yield store
    store.close()


def pruned_runs(location: Path | str) -> list[str]:
    store = open_store(location, lock=False)
    try:
        return sorted(r.run_id for r in store.recent_runs(100) if r.pruned_at is not None)
    finally:
        store.close()


def outcome_count(location: Path | str, run_id: str) -> int:
    store = open_store(location, lock=False)
    try:
        return sum(1 for _ in store.iter_outcomes(run_id))
    finally:
        store.close()


async def test_a_run_goes_only_when_older_than_keep_days_and_not_among_the_last_keep_runs(
    location: Path | str,
) -> None:
    """keep_days AND keep_runs: a run is pruned only when both let it go."""
    for run in range(10):  # ages 100, 90, ... 10 days
        await add_run(location, run)
    result = prune(location, Policy(keep_days=35, keep_runs=5))
    # Older than 35 days: runs 0-6; the last 5 are runs 5-9: so runs 0-4 go.
    assert pruned_runs(location) == [f"run-{i}" for i in range(5)]
    assert result.rows == 5 * ROWS
    assert outcome_count(location, "run-5") == ROWS
    assert outcome_count(location, "run-0") == 0
    prune(location, Policy(keep_days=45, keep_runs=1))  # older than 45 days: runs 0-5
    assert pruned_runs(location) == [f"run-{i}" for i in range(6)]


async def test_dry_run_counts_and_removes_nothing(location: Path | str) -> None:
    """--dry-run names the runs and rows it would remove and changes nothing."""
    for run in range(4):
        await add_run(location, run)
    result = prune(location, Policy(keep_days=1, keep_runs=1), dry_run=True)
    assert result.runs == ("run-0", "run-1", "run-2")
    assert result.rows == 3 * ROWS
    assert pruned_runs(location) == []
    assert outcome_count(location, "run-0") == ROWS


async def test_keep_days_zero_is_retention_off(location: Path | str) -> None:
    """keep_days = 0 prunes nothing, however many and however old the runs."""
    for run in range(3):
        await add_run(location, run)
    result = prune(location, Policy(keep_days=0, keep_runs=0))
    assert result.runs == ()
    assert pruned_runs(location) == []


async def test_created_combinations_and_in_doubt_intents_outlive_their_runs(
    location: Path | str,
) -> None:
    """A pruned run's creations still make rows skip, and its in-doubt rows stay in doubt."""
    store = open_store(location)
    store.begin_run("run-0", "m.csv", NOW - 100 * DAY_S, ("campaign_id",), {})
    store.record("run-0", WS, ("c0001", "s0001"), outcome(1, Status.CREATED, 0))
    await store.intent("run-0", WS, ("c0002", ""), None, 2)
    doubt = Outcome(2, Status.FAILED, "c0002", None, error=state_schema.IN_DOUBT, message="m")
    store.record("run-0", WS, ("c0002", ""), doubt)
    await store.flush()
    store.finish_run("run-0", NOW - 100 * DAY_S, 1, {"created": 1, "failed": 1}, {})
    store.close()
    await add_run(location, 1, rows=1)
    prune(location, Policy(keep_days=1, keep_runs=1))
    assert pruned_runs(location) == ["run-0"]
    store = open_store(location, lock=False)
    try:
        found = store.lookup_many(WS, [("c0001", "s0001"), ("c0002", "")])
        assert found[("c0001", "s0001")].kind == "created"
        assert found[("c0001", "s0001")].run_id == "run-0"  # the tombstone names the creator
        assert found[("c0002", "")].kind == "in_doubt"
        assert store.open_problems()["in_doubt"] == 1
    finally:
        store.close()


async def test_the_run_recording_now_is_never_pruned(location: Path | str) -> None:
    """The store's own run survives a prune at its end, even with keep_runs = 0."""
    await add_run(location, 0)
    store = open_store(location)
    store.begin_run("live", "m.csv", NOW - 50 * DAY_S, None, {})
    store.record("live", WS, None, outcome(1, Status.FAILED, 9))
    await store.flush()
    store.finish_run("live", NOW - 50 * DAY_S, 1, {"failed": 1}, {})
    store.prune(Policy(keep_days=1, keep_runs=0), now=NOW)
    store.close()
    assert pruned_runs(location) == ["run-0"]
    assert outcome_count(location, "live") == 1


async def test_an_unfinished_run_is_pruned_on_sqlite_when_the_lock_says_it_is_dead(
    path: Path,
) -> None:
    """A run that died without finishing is old history once the pruner holds the lock."""
    await add_run(path, 0, finished=False)
    await add_run(path, 1)
    prune(path, Policy(keep_days=1, keep_runs=1))
    assert pruned_runs(path) == ["run-0"]


async def test_an_unfinished_run_waits_while_another_postgresql_lease_is_live(
    pg_url: str,
) -> None:
    """On PostgreSQL an unfinished run may be another host's live run: kept while any
    other lease is live, pruned once none is."""
    await add_run(pg_url, 0, finished=False)
    await add_run(pg_url, 1)
    other = open_store(pg_url, workspaces=["ws-other"])  # a live run elsewhere
    try:
        prune(pg_url, Policy(keep_days=1, keep_runs=1))
        assert pruned_runs(pg_url) == []
    finally:
        other.close()
    prune(pg_url, Policy(keep_days=1, keep_runs=1))
    assert pruned_runs(pg_url) == ["run-0"]


async def test_export_of_a_pruned_run_says_when_and_what_is_left(
    location: Path | str, tmp_path: Path
) -> None:
    """export of a pruned run is one StateError line (exit 2) with its time and record."""
    await add_run(location, 0)
    await add_run(location, 1)
    prune(location, Policy(keep_days=1, keep_runs=1))
    store = open_store(location, lock=False)
    try:
        with pytest.raises(StateError) as caught:
            export_run(store, "run-0", tmp_path / "again")
        message = str(caught.value)
        assert "run run-0 was pruned 1972-09-27T00:00:00.000Z" in message
        assert "exit code 3" in message
        assert f"{ROWS} deferred" in message
        assert "\n" not in message
        assert caught.value.exit_code == 2
        assert not (tmp_path / "again" / "results.jsonl").exists()
        summary = export_run(store, "run-1", tmp_path / "kept")
        assert summary == {"rows_total": ROWS}
    finally:
        store.close()


async def test_status_shows_the_store_size_and_the_retention(location: Path | str) -> None:
    """status carries the store's bytes, the policy in force and which runs were pruned."""
    await add_run(location, 0)
    await add_run(location, 1)
    prune(location, Policy(keep_days=1, keep_runs=1))
    store = open_store(location, lock=False)
    try:
        report = status_report(store, NOW, Policy(7, 2))
    finally:
        store.close()
    assert isinstance(report["store_bytes"], int)
    assert report["store_bytes"] > 0
    assert report["retention"] == {
        "keep_days": 7,
        "keep_runs": 2,
        "enabled": True,
        "text": "runs older than 7 days beyond the last 2 are pruned at the end of each run",
    }
    runs = {r["run_id"]: r["pruned_at"] for r in report["runs"]}  # type: ignore[attr-defined]
    assert runs == {"run-1": None, "run-0": "1972-09-27T00:00:00.000Z"}
    text = format_status(report)
    assert "MB)" in text.splitlines()[0]
    assert text.splitlines()[1].startswith("retention: runs older than 7 days")


async def test_an_interrupted_prune_is_finished_by_the_next(location: Path | str) -> None:
    """A prune stopped after its first step leaves the run marked pruned (export says so)
    and the next prune, whatever its policy, removes the rest."""
    # Failed rows: kept one row each on both backends (SQLite keeps deferred ones in a
    # block, which one step removes whole).
    await add_run(location, 0, status=Status.FAILED)
    await add_run(location, 1, status=Status.FAILED)

    def stop(_run: str, _done: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prune(location, Policy(keep_days=1, keep_runs=1), step_rows=10, progress=stop)
    assert pruned_runs(location) == ["run-0"]
    assert outcome_count(location, "run-0") == ROWS - 10
    prune(location, Policy(keep_days=0))
    assert outcome_count(location, "run-0") == 0
    assert outcome_count(location, "run-1") == ROWS


async def test_a_new_sqlite_store_shrinks_its_file_after_pruning(path: Path) -> None:
    """New stores use auto_vacuum = INCREMENTAL: pruned pages go back to the disk."""
    for run in range(3):
        await add_run(path, run, rows=3000, status=Status.FAILED)  # stored whole
    before = path.stat().st_size
    result = prune(path, Policy(keep_days=1, keep_runs=1))
    assert result.bytes_after < result.bytes_before
    assert path.stat().st_size < before * 0.6
    assert result.note is None
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA auto_vacuum").fetchone() == (2,)
    assert conn.execute("PRAGMA freelist_count").fetchone() == (0,)
    conn.close()


async def test_an_older_store_reuses_space_and_switches_once_with_vacuum(path: Path) -> None:
    """A store without incremental vacuum keeps its size (a note says how to switch);
    prune --vacuum switches it once and the file shrinks."""
    for run in range(3):  # failed rows, stored whole (deferred ones compress to little)
        await add_run(path, run, rows=3000, status=Status.FAILED)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA auto_vacuum = NONE")
    conn.execute("VACUUM")  # as a store made before this version is
    conn.close()
    result = prune(path, Policy(keep_days=1, keep_runs=1))
    assert "predates incremental vacuum" in str(result.note)
    assert "prune --vacuum" in str(result.note)
    size = path.stat().st_size
    result = prune(path, Policy(keep_days=1, keep_runs=1), vacuum=True)
    assert result.note is None
    assert path.stat().st_size < size * 0.6
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA auto_vacuum").fetchone() == (2,)
    conn.close()
    assert outcome_count(path, "run-2") == 3000


def test_a_store_of_schema_1_gains_the_pruned_column_and_keeps_its_runs(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The migration adds runs.pruned_at to an existing store; its runs stay unpruned."""
    with monkeypatch.context() as m:
        m.setattr(state_schema, "MIGRATIONS", state_schema.MIGRATIONS[:1])
        conn = sqlite3.connect(path, isolation_level=None)
        state_schema.prepare(conn, path)
        conn.execute(
            "INSERT INTO runs (run_id, manifest, pid, started_at) VALUES ('old', 'm.csv', 1, 5)"
        )
        conn.close()
    store = open_store(path, lock=False)
    try:
        (record,) = store.recent_runs()
        assert record.run_id == "old"
        assert record.pruned_at is None
    finally:
        store.close()


def test_a_postgresql_schema_of_version_1_gains_the_pruned_column(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The PostgreSQL migration adds runs.pruned_at to an existing schema, runs kept."""
    import psycopg

    from provisioner._state import postgres_schema

    with monkeypatch.context() as m:
        m.setattr(postgres_schema, "MIGRATIONS", postgres_schema.MIGRATIONS[:1])
        open_store(pg_url, lock=False).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO provisioner.runs (run_id, manifest, pid, started_at)"
            " VALUES ('old', 'm.csv', 1, 5)"
        )
    store = open_store(pg_url, lock=False)
    try:
        (record,) = store.recent_runs()
        assert record.run_id == "old"
        assert record.pruned_at is None
    finally:
        store.close()


async def test_the_prune_command_works_on_both_backends(
    location: Path | str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`provisioner prune --json` prunes by its flags on SQLite (under the run lock) and on
    PostgreSQL (without a lease), and reports runs, rows and sizes."""
    import orjson

    from provisioner._cli.main import main

    for run in range(3):
        await add_run(location, run, started_at=1000.0 + run)
    code = main(["prune", "--state", str(location), "--keep-days", "1", "--keep-runs", "1"])
    assert code == 0
    assert capsys.readouterr().out.startswith("provisioner: pruned 2 run(s) (run-0, run-1)")
    assert main(["prune", "--state", str(location), "--json", "--dry-run"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["runs"] == []
    assert report["retention"] == {"keep_days": 30.0, "keep_runs": 10, "enabled": True}
    assert pruned_runs(location) == ["run-0", "run-1"]
