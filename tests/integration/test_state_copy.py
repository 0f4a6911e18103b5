"""``provisioner state copy --from --to``: a store made by real runs against the sandbox
travels SQLite -> PostgreSQL -> SQLite and reads the same on every hop (status, export,
a new run's skips); a target holding anything, a source a run holds, and one store named
twice are refused; the password shows nowhere."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provisioner._core.models import Outcome, Status
from provisioner._state.copy import copy_store, tables_of
from provisioner._state.interface import TABLES
from provisioner._state.opening import open_store
from provisioner.api import run_pipeline
from provisioner.sandbox.server import FaultRule, Sandbox
from tests.pg_server import PASSWORD

from .helpers import campaigns, settings_for, write_csv
from .test_cli import provisioner


def no_password(*texts: str) -> None:
    for text in texts:
        assert PASSWORD not in text


async def copy(source: str, target: str, *extra: str) -> tuple[int, str]:
    code, out, err = await provisioner("state", "copy", "--from", source, "--to", target, *extra)
    no_password(out, err)
    return code, err


async def status(state: str) -> dict[str, Any]:
    code, out, err = await provisioner("status", "--json", "--state", state)
    assert code == 0, err
    no_password(out, err)
    report: dict[str, Any] = orjson.loads(out)
    # Where the store is and its size on disk differ by backend; nothing else may.
    report.pop("state")
    assert report.pop("store_bytes") > 0
    return report


async def exported(state: str, run_id: str, out: Path) -> dict[str, bytes]:
    """A run's four files as ``export`` writes them from ``state`` (summary's `files`
    block aside: it names the folder written)."""
    code, stdout, err = await provisioner(
        "export", "--run", run_id, "--out", str(out), "--state", state
    )
    assert code == 0, err
    no_password(stdout, err)
    files = {
        name: (out / name).read_bytes()
        for name in ("results.jsonl", "failures.jsonl", "deferred.csv")
    }
    summary = orjson.loads((out / "summary.json").read_bytes())
    summary.pop("files")
    files["summary.json"] = orjson.dumps(summary, option=orjson.OPT_SORT_KEYS)
    return files


def dump(state: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in the shape state copy moves them."""
    store = open_store(state if "://" in state else Path(state), lock=False)
    tables = tables_of(store)
    try:
        with tables.snapshot() as rows_of:
            # Sorted here: an escaped NUL (postgres_text.py) sorts apart from SQLite's.
            return {t: sorted(rows_of(t), key=repr) for t in TABLES}
    finally:
        tables.close()
        store.close()


async def test_round_trip_sqlite_postgresql_sqlite(
    sandbox: Sandbox, tmp_path: Path, pg_url: str
) -> None:
    """Runs leave created, in-doubt, deferred and skipped rows in a SQLite store; copied
    to PostgreSQL and back, every table holds the same rows, status and export read the
    same, and a new run on either copy skips what was created, leaves the in-doubt row
    alone and sends only the deferred rows."""
    sandbox.add_faults([FaultRule(action="drop_after", campaign_id="n000000")])
    manifest = write_csv(tmp_path / "m.csv", [("n000000", ""), *campaigns(6)])
    source = str(tmp_path / "state.sqlite3")
    runs = []
    for _ in range(2):  # the second finds the window spent: skips, in doubt, deferred
        settings = settings_for(sandbox.url, tmp_path, manifest, quota=4, max_wait=0, concurrency=1)
        runs.append(await run_pipeline(settings))
    assert runs[0].summary["counts"] == {
        **runs[0].summary["counts"],
        "created": 3,
        "deferred": 3,
        "failed": 1,
    }
    assert runs[1].summary["counts"]["skipped"] == 3
    sent = sandbox.ledger.total

    code, err = await copy(source, pg_url)
    assert code == 0, err
    assert "copied state store" in err
    assert "2 runs, 3 created combinations, 1 intents (in flight or in doubt), 14 outcomes" in err
    back = str(tmp_path / "back.sqlite3")
    code, err = await copy(pg_url, back)
    assert code == 0, err

    original = dump(source)
    assert dump(pg_url) == original
    assert dump(back) == original
    assert [row[3] for row in original["intents"]] == ["in_doubt"]
    expected = await status(source)
    assert expected["problems"]["in_doubt"] == 1
    assert await status(pg_url) == expected
    assert await status(back) == expected
    for run in runs:
        files = await exported(source, run.run_id, tmp_path / "x" / run.run_id)
        assert await exported(pg_url, run.run_id, tmp_path / "p" / run.run_id) == files
        assert await exported(back, run.run_id, tmp_path / "b" / run.run_id) == files
    assert sandbox.ledger.total == sent  # copying sends nothing

    for state in (pg_url, back):  # a new run, no cap: the deferred rows go, nothing else
        out = tmp_path / f"after-{len(runs)}"
        settings = settings_for(sandbox.url, tmp_path, manifest, state_path=state, max_wait=0)
        result = await run_pipeline(dataclasses.replace(settings, out_dir=out))
        runs.append(result)
        counts = result.summary["counts"]
        assert (counts["skipped"], counts["created"], counts["failed"]) == (3, 3, 1), counts
    assert sandbox.ledger.total == sent + 6  # three deferred rows, once per copy


@pytest.mark.parametrize("table", TABLES)
async def test_a_target_holding_anything_is_refused(tmp_path: Path, table: str) -> None:
    """A target with one row in any table (a run, a creation, an intent, an outcome, a
    quota window) is refused, exit 2, naming it and the fix; nothing is written."""
    source = tmp_path / "from.sqlite3"
    open_store(source, lock=False).close()
    target = tmp_path / "to.sqlite3"
    open_store(target, lock=False).close()
    row = {
        "runs": "INSERT INTO runs (run_id, manifest, pid, started_at) VALUES ('r', 'm', 1, 0)",
        "created": "INSERT INTO created (workspace, campaign_id, key, send_id, run_seq,"
        " created_at) VALUES ('w', 'c', 's:a', 'a', 1, 0)",
        "intents": "INSERT INTO intents VALUES ('w', 'c', 's:a', 'in_doubt', 1, 0, 'a', 1)",
        "outcomes": "INSERT INTO outcomes (run_seq, status, line, attempts, retryable)"
        " VALUES (1, 'created', 1, 1, 0)",
        "quota_windows": f"INSERT INTO quota_windows VALUES ('w', {time.time() + 3600}, 5, 4, 1)",
    }[table]
    with sqlite3.connect(target) as conn:
        conn.execute(row)
    before = dump(str(target))
    code, err = await copy(str(source), str(target))
    assert code == 2, err
    assert err.count("\n") == 1
    assert f"state store {target} is not empty" in err
    assert "copy into a new file, an empty database, or another schema" in err
    assert dump(str(target)) == before


async def test_a_non_empty_database_target_is_refused_without_its_password(
    sandbox: Sandbox, tmp_path: Path, pg_url: str
) -> None:
    """Copying into a database that a run has used: exit 2, the URL shown without its
    password, the database unchanged."""
    manifest = write_csv(tmp_path / "m.csv", campaigns(2))
    await run_pipeline(settings_for(sandbox.url, tmp_path, manifest, state_path=pg_url))
    other = tmp_path / "other.sqlite3"
    await run_pipeline(settings_for(sandbox.url, tmp_path, manifest, state_path=str(other)))
    code, err = await copy(str(other), pg_url)
    assert code == 2, err
    assert "postgresql://prov@127.0.0.1" in err
    assert "is not empty (1 runs, 2 created combinations" in err
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM provisioner.runs").fetchone() == (1,)


async def test_a_source_a_run_holds_exits_75(tmp_path: Path, pg_url: str) -> None:
    """A live run on the source (its lock, or a workspace's lease) makes the copy exit 75
    and copy nothing."""
    source = tmp_path / "from.sqlite3"
    holder = open_store(source)
    try:
        code, err = await copy(str(source), str(tmp_path / "to.sqlite3"))
    finally:
        holder.close()
    assert code == 75, err
    assert "in use by another run" in err
    holder = open_store(pg_url, workspaces=["ws-a"])
    try:
        code, err = await copy(pg_url, str(tmp_path / "to2.sqlite3"))
    finally:
        holder.close()
    assert code == 75, err
    assert "'ws-a' is in use by another run" in err


async def test_one_store_named_twice_or_a_missing_source_is_refused(tmp_path: Path) -> None:
    """--from and --to naming one store, or a source file that does not exist: exit 2."""
    state = tmp_path / "s.sqlite3"
    open_store(state, lock=False).close()
    code, err = await copy(str(state), str(tmp_path / "." / "s.sqlite3"))
    assert code == 2
    assert "both name state store" in err
    code, err = await copy(str(tmp_path / "missing.sqlite3"), str(tmp_path / "t.sqlite3"))
    assert code == 2
    assert "does not exist" in err


# NUL and U+FDD0 often: PostgreSQL cannot hold the first, the store escapes it with the second.
_texts = st.text(
    st.sampled_from("\x00\ufdd0") | st.characters(blacklist_categories=["Cs"]), max_size=12
)
_values = st.one_of(
    _texts, st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.booleans(), st.none()
)
_records = st.lists(
    st.tuples(
        st.sampled_from(["ws-a", "ws-b"]),
        st.sampled_from(["c1", "c2", "c\x00\ufdd03"]),
        _texts,  # the send id, or "" for none
        st.sampled_from(["created", "in_doubt", "in_flight", "failed", "deferred", "skipped"]),
        st.lists(st.tuples(_texts, _values), max_size=3),
        st.one_of(st.none(), st.floats(0, 1e6)),
    ),
    max_size=25,
)
_examples = itertools.count()


# pg_url is one database for all examples: each example copies into its own schema.
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(records=_records, finish=st.booleans())
def test_varied_contents_survive_the_round_trip(
    records: list[tuple[Any, ...]], finish: bool, pg_url: str, tmp_path_factory: Any
) -> None:
    """Whatever a run recorded (created, in flight, in doubt, failed, deferred, skipped
    rows; odd columns, integers past 64 bits, text of any script, NUL included; quota
    windows; a run left unfinished), SQLite -> PostgreSQL -> SQLite keeps every row of
    every table."""
    folder = tmp_path_factory.mktemp("prop")
    source = folder / "s.sqlite3"
    asyncio.run(_record(source, records, finish))
    schema = f"prop_{next(_examples)}"
    url = f"{pg_url}?schema={schema}"
    back = folder / "back.sqlite3"
    copy_store(source, url)
    copy_store(url, back)
    original = dump(str(source))
    assert dump(url) == original
    assert dump(str(back)) == original
    for state in (str(source), url, str(back)):
        store = open_store(state if "://" in state else Path(state), lock=False)
        outcomes = list(store.iter_outcomes("r1"))
        store.close()
        assert len(outcomes) == sum(r[3] != "in_flight" for r in records)


async def _record(path: Path, records: list[tuple[Any, ...]], finish: bool) -> None:
    store = open_store(path)  # one store, one run: r0 first, finished
    store.begin_run("r0", "m", 1.0, None, {})
    store.finish_run("r0", 2.0, 0, {}, {})
    store.close()
    store = open_store(path)
    store.begin_run("r1", "m.csv", time.time(), ("campaign_id", "x"), {"quota": 5})
    for line, (ws, campaign, send_id, status, columns, latency) in enumerate(records, 1):
        key = (campaign, f"s:{send_id}" if send_id else f"n:{line}")
        sid = send_id or None
        if status == "in_flight":
            await store.intent("r1", ws, key, sid, line)
            continue
        if status == "created":
            outcome = Outcome(line, Status.CREATED, campaign, sid or f"b{line}", tuple(columns))
        elif status == "in_doubt":
            await store.intent("r1", ws, key, sid, line)
            outcome = Outcome(line, Status.FAILED, campaign, sid, error="in_doubt")
        elif status == "skipped":
            created_run = "r0" if line % 2 else "gone-run"  # a run id the store may not know
            outcome = Outcome(
                line, Status.SKIPPED, campaign, sid, created_run=created_run, created_at=1.5
            )
        else:
            outcome = Outcome(
                line, Status(status), campaign, sid, tuple(columns), attempts=2,
                http_status=503, latency_ms=latency, error="server_error", message=send_id,
                retryable=True, reason="quota" if status == "deferred" else None,
            )  # fmt: skip
        store.record("r1", ws, key, outcome)
        store.record_quota(ws, time.time() + 3600, 100, 90 - line, 1)
    await store.flush()
    if finish:
        store.finish_run("r1", time.time(), 1, {"created": 1}, {"run_id": "r1"})
    store.close()
