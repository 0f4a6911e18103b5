"""The state store on both backends (the `location`/`store` fixtures) unless a test says
why it is SQLite's: round trips, intents, crash safety, refusals, writer errors."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from provisioner._core.models import Outcome, Row, Skip, Status
from provisioner._pipeline.outcomes import skipped
from provisioner._state import batch as state_batch
from provisioner._state import postgres_schema as pg_schema
from provisioner._state import schema as state_schema
from provisioner._state import store as state
from provisioner._state.opening import open_store
from provisioner._state.postgres_schema import parse_location
from provisioner._state.store import SqliteStateStore, default_state_path, scrub_settings
from provisioner.errors import StateError, StateLockedError

WS = "ws-main"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "state.sqlite3"


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, path: Path) -> Path | str:
    """Where a store lives, once per backend: tests taking it pin StateStore behaviour
    both backends share (the PostgreSQL one on a throwaway server, fresh database)."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return path


@pytest.fixture
def store(location: Path | str) -> Iterator[SqliteStateStore]:
    s = open_store(location)
    s.begin_run("run-1", "manifest.csv", 1000.0, ("campaign_id", "send_id", "note"), {})
    yield s
    s.close()


@pytest.fixture
def sqlite_store(path: Path) -> Iterator[SqliteStateStore]:
    s = open_store(path)
    s.begin_run("run-1", "manifest.csv", 1000.0, ("campaign_id", "send_id", "note"), {})
    yield s
    s.close()


def created(line: int, campaign_id: str, send_id: str) -> Outcome:
    return Outcome(line, Status.CREATED, campaign_id, send_id, (("campaign_id", campaign_id),))


def failed(line: int, campaign_id: str, error: str, send_id: str | None = None) -> Outcome:
    return Outcome(line, Status.FAILED, campaign_id, send_id, error=error, message="m")


def fresh_rows(location: Path | str, sql: str) -> list[tuple[object, ...]]:
    """``sql`` (SQLite's dialect, bare table names) on a brand-new connection to the
    store at ``location``, of either backend: what another process would read."""
    if isinstance(location, Path):
        conn = sqlite3.connect(location)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()
    import psycopg

    where = parse_location(location)
    with psycopg.connect(where.conninfo) as pg_conn:
        rows = pg_conn.execute(pg_schema.translate(sql, where.schema)).fetchall()
    return [tuple(row) for row in rows]


def add_failing_trigger(location: Path | str, message: str) -> None:
    """Make every later insert into outcomes fail with ``message``, from outside the store."""
    if isinstance(location, Path):
        with sqlite3.connect(location) as conn:
            conn.execute(
                "CREATE TRIGGER boom BEFORE INSERT ON outcomes"
                f" BEGIN SELECT RAISE(ABORT, '{message}'); END"
            )
        return
    import psycopg

    with psycopg.connect(location, autocommit=True) as pg_conn:
        pg_conn.execute(
            "CREATE FUNCTION provisioner.boom() RETURNS trigger LANGUAGE plpgsql AS"
            f" $$ BEGIN RAISE EXCEPTION '{message}'; END $$"
        )
        pg_conn.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON provisioner.outcomes"
            " FOR EACH ROW EXECUTE FUNCTION provisioner.boom()"
        )


def spawn(code: str, path: Path) -> subprocess.Popen[str]:
    """A child Python process running ``code`` with STATE set to ``path``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STATE": str(path)}
    script = "import asyncio, os, signal, sys\nfrom pathlib import Path\n"
    script += "from provisioner._state.opening import open_store\n" + textwrap.dedent(code)
    return subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip


async def test_every_outcome_field_round_trips_in_line_order(store: SqliteStateStore) -> None:
    """record + iter_outcomes rebuild every Outcome field, columns included, sorted by line."""
    outcomes = [
        Outcome(
            line=9, status=Status.FAILED, campaign_id="c1", send_id="s9",
            columns=(("campaign_id", "c1"), ("n", 3), ("f", 1.5), ("none", None),
                     ("list", [1, "a", {"k": True}]), ("ü", "ß—✓")),
            attempts=3, http_status=503, latency_ms=12.25, error="server_error",
            message="Braze answered 503", retryable=True, field="send_id",
        ),
        Outcome(3, Status.DUPLICATE, "c1", "s1", (("campaign_id", "c1"),), duplicate_of=2),
        Outcome(4, Status.SKIPPED, "c1", "s4", created_run="run-1", created_at=1234.5),
        Outcome(5, Status.SKIPPED, "c1", "s5", created_run="run-gone", created_at=1.0),
        Outcome(6, Status.DEFERRED, None, None, (("huge", 2**70),), reason="quota"),
        Outcome(2, Status.CREATED, "c1", "s1", attempts=1, http_status=201, latency_ms=0.5),
    ]  # fmt: skip
    for outcome in outcomes:
        key = None if outcome.campaign_id is None else (outcome.campaign_id, f"s:{outcome.send_id}")
        if outcome.status is Status.DUPLICATE:
            key = ("c1", "s:s1")
        store.record("run-1", WS, key, outcome)
    await store.flush()
    assert list(store.iter_outcomes("run-1")) == sorted(outcomes, key=lambda o: o.line)


async def test_iter_outcomes_pages_through_large_runs(store: SqliteStateStore) -> None:
    """More outcomes than one read page come back complete and in order."""
    for line in range(1, 4502):
        store.record("run-1", WS, None, Outcome(line, Status.DEFERRED, None, None, reason="q"))
    await store.flush()
    assert [o.line for o in store.iter_outcomes("run-1")] == list(range(1, 4502))


async def test_created_keys_are_found_only_in_their_workspace(store: SqliteStateStore) -> None:
    """lookup_many returns created combinations (run, time, send_id) for their workspace only."""
    store.record("run-1", WS, ("c1", "s:a"), created(2, "c1", "a"))
    store.record("run-1", WS, ("c1", "n:1"), created(3, "c1", "braze-made"))
    await store.flush()
    found = store.lookup_many(WS, [("c1", "s:a"), ("c1", "n:1"), ("c1", "s:zz"), ("c2", "s:a")])
    assert set(found) == {("c1", "s:a"), ("c1", "n:1")}
    assert found["c1", "n:1"].kind == "created"
    assert found["c1", "n:1"].send_id == "braze-made"
    assert found["c1", "n:1"].run_id == "run-1"
    assert store.lookup_many("ws-other", [("c1", "s:a")]) == {}


async def test_lookup_many_spans_several_chunks(store: SqliteStateStore) -> None:
    """Batches larger than one SQL chunk (1,000 keys) are looked up completely."""
    for i in range(0, 2500, 7):
        store.record("run-1", WS, ("c", f"s:{i}"), created(i + 1, "c", str(i)))
    await store.flush()
    found = store.lookup_many(WS, [("c", f"s:{i}") for i in range(2500)])
    assert set(found) == {("c", f"s:{i}") for i in range(0, 2500, 7)}


async def test_intent_is_committed_when_its_await_returns(
    store: SqliteStateStore, location: Path | str
) -> None:
    """After `await intent(...)` the intent is readable from a brand-new connection."""
    await store.intent("run-1", WS, ("c1", "s:a"), "a", 7)
    rows = fresh_rows(location, "SELECT state, send_id, line FROM intents")
    assert rows == [("in_flight", "a", 7)]


async def test_lazy_intent_is_queued_not_awaited(
    store: SqliteStateStore, location: Path | str
) -> None:
    """wait=False returns at once; the intent is on disk after the next flush."""
    await store.intent("run-1", WS, ("c1", "s:b"), "b", 8, wait=False)
    await store.flush()
    rows = fresh_rows(location, "SELECT state, send_id, line FROM intents")
    assert rows == [("in_flight", "b", 8)]


async def test_unwaited_records_reach_the_disk_without_a_flush(
    store: SqliteStateStore, location: Path | str
) -> None:
    """A record nobody waits for is committed by the writer's own poll, not only by flush()."""
    store.record("run-1", WS, ("c9", "s:z"), created(9, "c9", "z"))
    for _ in range(500):  # the writer polls every 10 ms; give it up to 5 s on a busy machine
        if fresh_rows(location, "SELECT count(*) FROM created")[0][0]:
            break
        await asyncio.sleep(0.01)
    assert fresh_rows(location, "SELECT campaign_id, send_id FROM created") == [("c9", "z")]


async def test_concurrent_intents_share_commits(store: SqliteStateStore) -> None:
    """Many workers awaiting intents at once are committed in far fewer transactions."""
    commits = 0
    real_apply = store._apply

    def counting(batch: list[state_batch.Op]) -> bool:  # the writer's one call per batch
        nonlocal commits
        commits += 1
        return real_apply(batch)

    store._apply = counting  # type: ignore[method-assign]
    await asyncio.gather(
        *(store.intent("run-1", WS, ("c", f"s:{i}"), str(i), i) for i in range(64))
    )
    assert 1 <= commits < 64


async def test_one_records_statements_share_a_transaction(
    sqlite_store: SqliteStateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even one operation per transaction never splits an outcome from its created row."""
    # SQLite only: it spies on the SQLite commit function (PostgreSQL commits in its own
    # PostgresStateStore._commit; both get their tables from the same batch.sort_batch).
    monkeypatch.setattr(state, "_BATCH", 1)
    seen: list[list[int]] = []
    real_commit = state_batch.commit

    def spying(conn: sqlite3.Connection, tables: list[list[state_batch.Op]], **kw: Any) -> None:
        seen.append([len(ops) for ops in tables])
        real_commit(conn, tables, **kw)

    monkeypatch.setattr(state, "commit", spying)
    sqlite_store.record("run-1", WS, ("c", "s:a"), created(1, "c", "a"))
    await sqlite_store.flush()
    assert seen == [[0, 1, 1, 1, 0]]  # runs, created, intents, outcomes, quota
    assert sqlite_store.pending == 0


async def test_own_in_flight_intents_are_not_reported_but_older_ones_are(
    location: Path | str,
) -> None:
    """An intent is invisible to its own run; the next run sees it as in_flight."""
    first = open_store(location)
    first.begin_run("run-1", "m", 1.0, None, {})
    await first.intent("run-1", WS, ("c1", "s:a"), "a", 2)
    assert first.lookup_many(WS, [("c1", "s:a")]) == {}
    first.close()  # as if the run died before recording the outcome
    second = open_store(location)
    second.begin_run("run-2", "m", 2.0, None, {})
    prior = second.lookup_many(WS, [("c1", "s:a")])["c1", "s:a"]
    assert (prior.kind, prior.run_id, prior.send_id) == ("in_flight", "run-1", "a")
    second.close()


async def test_outcomes_settle_intents_as_documented(location: Path | str) -> None:
    """created and this run's failures resolve intents; in_doubt keeps them; duplicates and
    an older run's intent under a deferral are left alone."""
    s = open_store(location)
    s.begin_run("run-1", "m", 1.0, None, {})
    for key in (("c", "s:ok"), ("c", "s:bad"), ("c", "n:1"), ("c", "s:old")):
        await s.intent("run-1", WS, key, None, 1)
    s.close()
    s = open_store(location)
    s.begin_run("run-2", "m", 2.0, None, {})
    await s.intent("run-2", WS, ("c", "s:ok"), "ok", 1)
    await s.intent("run-2", WS, ("c", "s:bad"), "bad", 2)
    s.record("run-2", WS, ("c", "s:ok"), Outcome(3, Status.DUPLICATE, "c", "ok", duplicate_of=1))
    s.record("run-2", WS, ("c", "s:ok"), created(1, "c", "ok"))
    s.record("run-2", WS, ("c", "s:bad"), failed(2, "c", "invalid_campaign_id", "bad"))
    s.record("run-2", WS, ("c", "n:1"), failed(4, "c", "in_doubt"))
    s.record("run-2", WS, ("c", "s:old"), Outcome(5, Status.DEFERRED, "c", "old", reason="quota"))
    await s.flush()
    found = s.lookup_many(WS, [("c", "s:ok"), ("c", "s:bad"), ("c", "n:1"), ("c", "s:old")])
    assert {k: p.kind for k, p in found.items()} == {
        ("c", "s:ok"): "created",
        ("c", "n:1"): "in_doubt",
        ("c", "s:old"): "in_flight",
    }
    assert found["c", "n:1"].run_id == "run-1"  # the doubt dates from the original request
    assert s.open_problems() == {"in_doubt": 1, "in_flight_stale": 1, "deferred_last_run": 1}
    s.close()


async def test_kill_9_keeps_committed_intent_and_lock_is_taken_over(path: Path) -> None:
    """A process killed after `await intent` leaves the intent readable as in_flight, and
    its lock is taken over with took_over_from naming it."""
    # SQLite only: its run lock file (PostgreSQL's lease takeover: test_state_postgres.py).
    child = spawn(
        """
        async def main():
            s = open_store(Path(os.environ["STATE"]))
            s.begin_run("dead-run", "m", 1.0, None, {})
            await s.intent("dead-run", "ws-main", ("c1", "n:1"), None, 5)
            print("ready", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        asyncio.run(main())
        """,
        path,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    assert child.wait(timeout=10) == -signal.SIGKILL
    s = open_store(path)
    try:
        assert s.took_over_from is not None
        assert s.took_over_from[0] == child.pid
        assert s.took_over_from[1].endswith("Z")
        s.begin_run("run-2", "m", 2.0, None, {})
        prior = s.lookup_many(WS, [("c1", "n:1")])["c1", "n:1"]
        assert (prior.kind, prior.run_id, prior.send_id) == ("in_flight", "dead-run", None)
        assert s.open_problems()["in_flight_stale"] == 1
    finally:
        s.close()
    after_clean_close = open_store(path)
    assert after_clean_close.took_over_from is None
    after_clean_close.close()


def test_second_run_is_refused_while_a_live_process_holds_the_store(path: Path) -> None:
    """Opening a store another live process holds raises StateLockedError (exit 75) naming
    its pid and start time; once it exits cleanly the store opens with no takeover."""
    # SQLite only: its run lock file (PostgreSQL's lease: test_state_postgres.py).
    child = spawn(
        """
        s = open_store(Path(os.environ["STATE"]))
        print("ready", flush=True)
        sys.stdin.readline()
        s.close()
        """,
        path,
    )
    assert child.stdout is not None
    assert child.stdin is not None
    assert child.stdout.readline().strip() == "ready"
    try:
        with pytest.raises(StateLockedError, match=rf"pid {child.pid}, started 20\d\d-") as info:
            open_store(path)
        assert info.value.exit_code == 75
        assert str(path) in str(info.value)
        reader = open_store(path, lock=False)  # status/export still work meanwhile
        assert reader.recent_runs() == []
        reader.close()
    finally:
        child.stdin.close()
        assert child.wait(timeout=10) == 0
    s = open_store(path)
    assert s.took_over_from is None
    s.close()


def write_foreign(p: Path) -> None:
    conn = sqlite3.connect(p)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()


def write_newer(p: Path) -> None:
    open_store(p).close()
    conn = sqlite3.connect(p)
    conn.execute(f"PRAGMA user_version = {state_schema.schema_version() + 1}")
    conn.close()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(os.urandom(8192)), "corrupt or not a SQLite database"),
        (lambda p: p.write_bytes(b"hello"), "corrupt or not a SQLite database"),
        (write_foreign, "another application's SQLite database"),
        (write_newer, "newer than this provisioner's"),
        (lambda p: p.mkdir(), "is a directory"),
    ],
    ids=["random-bytes", "tiny-file", "foreign", "newer-version", "directory"],
)
def test_unusable_files_are_one_line_state_errors(
    tmp_path: Path, make: object, message: str
) -> None:
    """Corrupt, foreign, newer and directory paths raise StateError naming path and fix."""
    p = tmp_path / "state.sqlite3"
    make(p)  # type: ignore[operator]
    with pytest.raises(StateError, match=message) as info:
        open_store(p)
    text = str(info.value)
    assert str(p) in text
    assert "--state PATH" in text
    assert "\n" not in text
    assert not isinstance(info.value, StateLockedError)
    open_store(tmp_path / "other.sqlite3").close()  # the failed open released its lock


def test_unwritable_location_is_a_state_error(tmp_path: Path) -> None:
    """A state path whose folder cannot be created raises StateError naming it."""
    # SQLite only: a file path; PostgreSQL's unreachable database is in test_state_postgres.py.
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(StateError, match=r"cannot create the folder .*--state PATH"):
        open_store(tmp_path / "file" / "sub" / "state.sqlite3")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through file permissions")
def test_read_only_folder_is_a_state_error(tmp_path: Path) -> None:
    """A folder without write permission raises StateError, not a traceback."""
    # SQLite only: a file path.
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(StateError, match="--state PATH"):
            open_store(folder / "state.sqlite3")
    finally:
        folder.chmod(0o700)


def test_missing_migration_steps_run_in_one_transaction(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file of the current version is upgraded by new steps; a failing step leaves it
    at its version, untouched."""
    # SQLite's steps are functions on a connection; the PostgreSQL twin is below.
    open_store(path).close()
    version, real = state_schema.schema_version(), list(state_schema.MIGRATIONS)

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half_done (x)")
        conn.execute("SELECT * FROM no_such_table")

    monkeypatch.setattr(state_schema, "MIGRATIONS", [*real, broken])
    with pytest.raises(StateError, match="no such table"):
        open_store(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone() == (version,)
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'half_done'").fetchall() == []
    conn.close()

    def add_index(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE INDEX created_by_run ON created (run_seq)")

    monkeypatch.setattr(state_schema, "MIGRATIONS", [*real, add_index])
    open_store(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone() == (version + 1,)
    assert conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'created_by_run'").fetchone()
    conn.close()


def test_missing_postgresql_migration_steps_run_in_one_transaction(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PostgreSQL schema is upgraded by the new steps; a failing step leaves it at its
    version, untouched."""
    open_store(pg_url).close()
    base = pg_schema.schema_version()
    broken = ("CREATE TABLE {s}.half_done (x INTEGER)", "SELECT * FROM {s}.no_such_table")
    monkeypatch.setattr(pg_schema, "MIGRATIONS", [*pg_schema.MIGRATIONS, broken])
    with pytest.raises(StateError, match="no_such_table"):
        open_store(pg_url)
    version = "SELECT value FROM provisioner.meta WHERE name = 'version'"
    assert fresh_rows(pg_url, version) == [(str(base),)]
    tables = "SELECT tablename FROM pg_tables WHERE schemaname = 'provisioner'"
    assert ("half_done",) not in fresh_rows(pg_url, tables)
    add_index = ("CREATE INDEX created_by_run ON {s}.created (run_seq)",)
    monkeypatch.setattr(pg_schema, "MIGRATIONS", [*pg_schema.MIGRATIONS[:base], add_index])
    open_store(pg_url).close()
    assert fresh_rows(pg_url, version) == [(str(base + 1),)]
    index = "SELECT 1 FROM pg_indexes WHERE indexname = 'created_by_run'"
    assert fresh_rows(pg_url, index) == [(1,)]


def test_settings_never_store_secret_looking_names(location: Path | str) -> None:
    """Settings named like *key*, *secret*, *token*, *password* (at any depth) are dropped."""
    settings = {"api_key": "K", "API_KEY": "K", "client_secret": "S", "rate": 5,
                "auth": {"token": "T", "base_url": "https://x"}, "keys": ["K"]}  # fmt: skip
    assert scrub_settings(settings) == {"rate": 5, "auth": {"base_url": "https://x"}}
    s = open_store(location)
    s.begin_run("run-1", "m", 1.0, None, settings)
    s.close()
    stored = str(fresh_rows(location, "SELECT settings FROM runs")[0][0])
    assert "K" not in stored
    assert "S" not in stored
    assert "T" not in stored
    assert '"rate":5' in stored


async def test_writer_errors_surface_on_every_later_call(
    store: SqliteStateStore, location: Path | str
) -> None:
    """A failed write raises StateError on flush, record, intent and finish_run; nothing later
    is committed."""
    add_failing_trigger(location, "disk on fire")
    store.record("run-1", WS, ("c", "s:a"), created(1, "c", "a"))
    with pytest.raises(StateError, match=r"disk on fire.*run again"):
        await store.flush()
    with pytest.raises(StateError):
        store.record("run-1", WS, None, Outcome(2, Status.DEFERRED, None, None))
    with pytest.raises(StateError):
        await store.intent("run-1", WS, ("c", "s:b"), "b", 3)
    with pytest.raises(StateError):
        store.finish_run("run-1", 2.0, 0, {}, {})
    assert fresh_rows(location, "SELECT count(*) FROM created") == [(0,)]
    store.close()  # the error was already surfaced: close does not raise it again


async def test_unsurfaced_writer_error_is_raised_by_close(location: Path | str) -> None:
    """An error nobody awaited is raised by close(), never swallowed."""
    s = open_store(location)
    s.begin_run("run-1", "m", 1.0, None, {})
    add_failing_trigger(location, "x")
    # A failed row: SQLite keeps deferred ones in a compact block, not in outcomes.
    s.record("run-1", WS, None, Outcome(1, Status.FAILED, None, None, error="e"))
    with pytest.raises(StateError, match="a write failed"):
        s.close()


async def test_quota_windows_sum_spent_and_keep_lowest_remaining(store: SqliteStateStore) -> None:
    """Observations of one window add spent and keep the lowest remaining; past windows and
    other workspaces are not the current window."""
    store.record_quota(WS, 500.0, 100, 40, 0)  # an expired window
    store.record_quota(WS, 2000.0, 100, 90, 3)
    store.record_quota(WS, 2000.0, 100, 95, 2)  # a stale, higher remaining is ignored
    store.record_quota("ws-other", 2000.0, 50, 1, 49)
    await store.flush()
    window = store.quota_window(WS, now=1000.0)
    assert window is not None
    assert (window.reset_at, window.limit, window.remaining, window.spent) == (2000.0, 100, 90, 5)
    assert store.quota_window(WS, now=2000.0) is None


async def test_a_stored_absurd_window_is_never_read_and_is_dropped_on_open(
    location: Path | str,
) -> None:
    """A window whose reset no server meant (1e30, past year 9999), as an older version
    stored it, is invisible to status and to the next run, and (SQLite) a run's open
    deletes it."""
    from provisioner._outputs.report import status_report

    s = open_store(location)
    s.begin_run("run-1", "a.csv", 1.0, None, {})
    s.record_quota(WS, 1e30, 100, 40, 3)
    s.record_quota("ws-far", 253402300800.0 + 86400, 100, 40, 3)
    s.finish_run("run-1", 2.0, 0, {}, {})
    s.close()
    reader = open_store(location, lock=False)
    try:
        assert reader.quota_window(WS, now=1000.0) is None
        assert status_report(reader, now=1000.0)["quota"] == []
    finally:
        reader.close()
    if isinstance(location, str):
        return  # the repair on open is SQLite's: no PostgreSQL store predates the bound
    open_store(location).close()
    assert fresh_rows(location, "SELECT COUNT(*) FROM quota_windows") == [(0,)]


async def test_recent_runs_and_open_problems(location: Path | str) -> None:
    """Runs list newest first with counts and exit codes; problems count doubts, stale
    intents and the latest run's deferred rows."""
    s = open_store(location)
    s.begin_run("run-1", "a.csv", 1.0, None, {})
    await s.intent("run-1", WS, ("c", "n:1"), None, 1)
    s.record("run-1", WS, ("c", "n:1"), failed(1, "c", "in_doubt"))
    await s.intent("run-1", WS, ("c", "s:x"), "x", 2)  # never recorded: in flight at "crash"
    s.record("run-1", WS, None, Outcome(3, Status.DEFERRED, None, None, reason="quota"))
    s.finish_run("run-1", 5.0, 3, {"deferred": 1, "failed": 1}, {"note": "first"})
    s.close()
    s = open_store(location)
    s.begin_run("run-2", "b.csv", 10.0, ("campaign_id",), {})
    for line in (1, 2):
        s.record("run-2", WS, None, Outcome(line, Status.DEFERRED, None, None, reason="quota"))
    s.finish_run("run-2", 11.0, 3, {"deferred": 2}, {"note": "second"})
    s.close()
    s = open_store(location, lock=False)
    runs = s.recent_runs()
    assert [(r.run_id, r.manifest, r.exit_code, r.counts) for r in runs] == [
        ("run-2", "b.csv", 3, {"deferred": 2}),
        ("run-1", "a.csv", 3, {"deferred": 1, "failed": 1}),
    ]
    assert runs[0].pid == os.getpid()
    assert runs[0].finished_at == 11.0
    assert s.recent_runs(limit=1) == runs[:1]
    assert s.open_problems() == {"in_doubt": 1, "in_flight_stale": 1, "deferred_last_run": 2}
    record, header, summary = s.run_info("run-2")
    assert (record, header, summary) == (runs[0], ("campaign_id",), {"note": "second"})
    with pytest.raises(StateError, match="no run 'nope'"):
        s.run_info("nope")
    with pytest.raises(StateError, match="no run 'nope'"):
        s.iter_outcomes("nope")
    with pytest.raises(RuntimeError, match="read-only"):
        s.record_quota(WS, 1.0, 1, 1, 1)
    s.close()


async def test_misuse_is_refused(store: SqliteStateStore, location: Path | str) -> None:
    """Writing for another run, a created outcome without key, a reused run id, or use after
    close raises instead of storing something wrong."""
    with pytest.raises(RuntimeError, match="not this store's run"):
        store.record("run-x", WS, None, Outcome(1, Status.DEFERRED, None, None))
    with pytest.raises(ValueError, match="needs a key"):
        store.record("run-1", WS, None, created(1, "c", "a"))
    with pytest.raises(ValueError, match="does not match"):
        store.record("run-1", WS, ("other", "s:a"), created(1, "c", "a"))
    with pytest.raises(RuntimeError, match="already records run"):
        store.begin_run("run-2", "m", 1.0, None, {})
    store.close()
    with pytest.raises(RuntimeError, match="closed"):
        store.lookup_many(WS, [("c", "s:a")])
    again = open_store(location)
    with pytest.raises(StateError, match="run id 'run-1' is already in state store"):
        again.begin_run("run-1", "m", 1.0, None, {})
    again.close()


def test_default_state_path_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """$XDG_STATE_HOME is used when absolute; otherwise ~/.local/state."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_state_path() == tmp_path / "provisioner" / "state.sqlite3"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/dir")
    assert default_state_path() == Path.home() / ".local/state/provisioner/state.sqlite3"


def test_an_intent_settled_in_the_same_commit_is_never_written() -> None:
    """Intent then settle for one key in a batch: only the delete remains; other orders stay."""
    ident = ("ws", "c1", "s:a")
    intent = (2, state_schema.SQL_INTENT, (*ident, 1, 1.0, "a", 2))
    settle = (2, state_schema.SQL_SETTLE, ident)
    own = (2, state_schema.SQL_SETTLE_OWN, (*ident, 1))
    doubt = (2, state_schema.SQL_DOUBT, (*ident, 1, 2.0, None, 2))
    other = (2, state_schema.SQL_INTENT, ("ws", "c2", "s:b", 1, 1.0, "b", 3))
    coalesce = state_batch.coalesce_intents
    assert coalesce([intent, other, settle]) == [other, settle]
    assert coalesce([intent, own]) == [own]
    assert coalesce([settle, intent]) == [settle, intent]
    assert coalesce([intent, doubt]) == [intent, doubt]
    assert coalesce([intent, doubt, settle]) == [intent, doubt, settle]


async def test_many_rows_in_one_commit_keep_queue_order(store: SqliteStateStore) -> None:
    """600 creations in one transaction (multi-row inserts): all stored, and a combination
    created twice in the batch keeps its later send_id, as row-by-row inserts would."""
    for i in range(600):
        store.record("run-1", WS, (f"c{i}", "n:1"), created(i + 2, f"c{i}", f"first-{i}"))
    store.record("run-1", WS, ("c7", "n:1"), created(700, "c7", "second-7"))
    await store.flush()
    found = store.lookup_many(WS, [(f"c{i}", "n:1") for i in range(600)])
    assert len(found) == 600
    assert found["c7", "n:1"].send_id == "second-7"
    assert found["c8", "n:1"].send_id == "first-8"


async def test_throttle_returns_once_the_writer_is_down_to_half(
    store: SqliteStateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above the high-water mark throttle() waits until half of it is left (not empty)."""
    monkeypatch.setattr(state, "_HIGH_WATER", 100)
    for i in range(1000):
        store.record("run-1", WS, None, Outcome(i + 2, Status.DEFERRED, None, None, reason="q"))
    await store.throttle()
    assert store.pending <= 50
    await store.flush()
    assert store.pending == 0


async def test_skipped_batch_stores_what_per_row_records_would(location: Path | str) -> None:
    """record_skipped stores the outcomes rows record() stores for each row's
    outcomes.skipped Outcome (a known and an unknown creating run, odd column values), and
    touches neither created nor intents: export and status read them alike."""
    columns: list[tuple[tuple[str, object], ...]] = [
        (("campaign_id", "c1"), ("send_id", "s1"), ("note", "ü")),
        (("campaign_id", "c2"), ("n", 2**70), ("f", 1.5), ("none", None)),  # stdlib fallback
        (("campaign_id", "c3"), ("send_id", "s3"), ("list", [1, {"k": True}])),
    ]
    skips: list[Skip] = [
        (Row(4, "c1", "s1", columns[0]), ("c1", "s:s1"), "s1", "run-0", 1234.5, None),
        (Row(7, "c2", None, columns[1]), ("c2", "n:1"), "braze-made", "run-gone", 1.0, None),
        (Row(9, "c3", "s3", columns[2]), ("c3", "s:s3"), "s3", "run-0", 99.25, None),
    ]
    dumps: list[list[tuple[object, ...]]] = []
    for batched in (True, False):
        name = "batched" if batched else "per_row"
        where: Path | str = (
            f"{location}?schema={name}"
            if isinstance(location, str)
            else location.parent / name / "state.sqlite3"
        )
        s = open_store(where)
        s.begin_run("run-0", "manifest.csv", 10.0, None, {})
        seed = Outcome(2, Status.CREATED, "c0", "s0", created_at=5.0)  # no clock: comparable
        s.record("run-0", WS, ("c0", "s:s0"), seed)
        await s.flush()
        s.finish_run("run-0", 11.0, 0, {}, {})
        s.close()  # a store records one run: reopen it for the next
        s = open_store(where)
        s.begin_run("run-1", "manifest.csv", 20.0, None, {})
        if batched:
            s.record_skipped("run-1", WS, skips)
        else:
            for row, key, send_id, run, at, _ in skips:
                prior = state.Prior("created", run, at, send_id)
                s.record("run-1", WS, key, skipped(row, send_id, prior))
        await s.flush()
        expected = [
            skipped(r, sid, state.Prior("created", run, at, sid)) for r, _, sid, run, at, _ in skips
        ]
        assert list(s.iter_outcomes("run-1")) == expected
        s.close()
        dumps.append(
            [
                *fresh_rows(where, "SELECT * FROM outcomes ORDER BY run_seq, line"),
                *fresh_rows(where, "SELECT * FROM created ORDER BY campaign_id"),
                *fresh_rows(where, "SELECT * FROM intents"),
            ]
        )
    assert dumps[0] == dumps[1]
    assert len(dumps[0]) == 5  # one outcome of run-0, three of run-1, one created row


def test_the_stores_implement_the_two_seams(location: Path | str) -> None:
    """Each store is a RunStore and a StoreReader; the reader seam has no write."""
    from provisioner._state.interface import RunStore, StoreReader

    writes = {"begin_run", "intent", "record", "record_skipped", "record_quota", "finish_run"}
    assert writes <= set(dir(RunStore))
    assert not writes & set(dir(StoreReader))
    run_store: RunStore = open_store(location)  # mypy checks the assignment
    run_store.close()
    reader: StoreReader = open_store(location, lock=False)
    reader.close()
