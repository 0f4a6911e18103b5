"""The store's set-based paths (postgres_bulk.py): a batch of keys looked up in one
statement, big inserts as COPY, a batch of settles as one DELETE; each pinned on both
backends for what it stores and finds, and on PostgreSQL for taking that path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from provisioner._core.models import Outcome, Row, Skip, Status
from provisioner._pipeline.outcomes import skipped
from provisioner._state import postgres_bulk as bulk
from provisioner._state.opening import open_store
from provisioner._state.schema import Prior
from provisioner._state.store import SqliteStateStore

WS = "ws-main"


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """The store's location, once per backend (PostgreSQL: a fresh database)."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return tmp_path / "state.sqlite3"


def begin(location: Path | str, run_id: str) -> SqliteStateStore:
    store = open_store(location, workspaces=[WS])
    store.begin_run(run_id, "m.csv", 10.0, None, {})
    return store


@pytest.fixture
def copies(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tables each COPY of the PostgreSQL writer went to, in order."""
    seen: list[str] = []

    def spy(name: str, real: Callable[..., None]) -> Callable[..., None]:
        def wrapper(cur: Any, s: str, rows: Any) -> None:
            seen.append(name)
            real(cur, s, rows)

        return wrapper

    monkeypatch.setattr(bulk, "copy_outcomes", spy("outcomes", bulk.copy_outcomes))
    monkeypatch.setattr(bulk, "copy_created", spy("created", bulk.copy_created))
    return seen


def rich(line: int) -> Outcome:
    """An outcome using every field, varied by line (one column too big for orjson)."""
    kind = line % 5
    if kind == 0:
        return Outcome(
            line, Status.FAILED, f"c{line}", None, (("campaign_id", f"c{line}"), ("n", 2**70)),
            attempts=3, http_status=503, latency_ms=12.25, error="server_error",
            message="Braze answered 503", retryable=True, field="send_id",
        )  # fmt: skip
    if kind == 1:
        return Outcome(line, Status.DUPLICATE, f"c{line}", "s", duplicate_of=line - 1)
    if kind == 2:
        return Outcome(line, Status.SKIPPED, f"c{line}", "s", created_run="gone", created_at=1.5)
    if kind == 3:
        return Outcome(line, Status.DEFERRED, None, None, (("ü", "ß—✓"),), reason="quota")
    return Outcome(line, Status.CREATED, f"c{line}", f"s{line}", attempts=1, latency_ms=0.5)


async def test_a_batch_of_varied_outcomes_round_trips(
    location: Path | str, copies: list[str]
) -> None:
    """Hundreds of outcomes of every shape in few commits come back field for field (on
    PostgreSQL through binary COPY, the created rows too)."""
    store = begin(location, "run-1")
    outcomes = [rich(line) for line in range(2, 402)]
    for outcome in outcomes:
        key = None if outcome.campaign_id is None else (outcome.campaign_id, f"s:{outcome.line}")
        store.record("run-1", WS, key, outcome)
    await store.flush()
    assert list(store.iter_outcomes("run-1")) == outcomes
    found = store.lookup_many(WS, [(f"c{line}", f"s:{line}") for line in range(2, 402)])
    assert {k for k, p in found.items() if p.kind == "created"} == {
        (f"c{o.line}", f"s:{o.line}") for o in outcomes if o.status is Status.CREATED
    }
    store.close()
    if isinstance(location, str):
        assert "outcomes" in copies
        assert "created" in copies


async def test_skipped_rows_in_bulk_store_what_record_would(
    location: Path | str, copies: list[str]
) -> None:
    """A thousand skipped rows (record_skipped) come back as their outcomes.skipped
    Outcomes; on PostgreSQL they went as COPY."""
    store = begin(location, "run-1")
    skips: list[Skip] = [
        (Row(i, f"c{i}", f"s{i}", (("campaign_id", f"c{i}"),)), (f"c{i}", f"s:s{i}"), f"s{i}",
         "run-0" if i % 2 else "run-1", 99.25, None)
        for i in range(2, 1002)
    ]  # fmt: skip
    store.record_skipped("run-1", WS, skips)
    await store.flush()
    expected = [skipped(r, sid, Prior("created", run, at, sid)) for r, _, sid, run, at, _ in skips]
    assert list(store.iter_outcomes("run-1")) == expected
    assert store.lookup_many(WS, [k for _, k, *_ in skips]) == {}  # skips create nothing
    store.close()
    if isinstance(location, str):
        assert copies
        assert set(copies) == {"outcomes"}


async def test_a_line_recorded_twice_keeps_its_later_outcome(location: Path | str) -> None:
    """The same line twice among many (in one batch or across two) ends as the later
    outcome: COPY refuses the repeat and the upserts apply the batch in order."""
    store = begin(location, "run-1")
    for line in range(2, 102):
        store.record("run-1", WS, None, Outcome(line, Status.DEFERRED, None, None, reason="q"))
    store.record("run-1", WS, None, Outcome(50, Status.DEFERRED, None, None, reason="later"))
    await store.flush()
    for line in range(102, 140):
        store.record("run-1", WS, None, Outcome(line, Status.DEFERRED, None, None, reason="q"))
    store.record("run-1", WS, None, Outcome(60, Status.DEFERRED, None, None, reason="again"))
    await store.flush()
    reasons = {o.line: o.reason for o in store.iter_outcomes("run-1")}
    assert len(reasons) == 138
    assert (reasons[50], reasons[60], reasons[51]) == ("later", "again", "q")
    store.close()


async def test_a_recreated_combination_points_at_its_latest_creation(
    location: Path | str,
) -> None:
    """Combinations a later run creates again (--force), among many new ones, point at
    that run and its send_id afterwards."""
    store = begin(location, "run-1")
    for i in range(40):
        store.record("run-1", WS, (f"c{i}", "n:1"), Outcome(i + 2, Status.CREATED, f"c{i}", "a"))
    await store.flush()
    store.finish_run("run-1", 11.0, 0, {}, {})
    store.close()
    store = begin(location, "run-2")
    for i in range(20, 80):
        store.record("run-2", WS, (f"c{i}", "n:1"), Outcome(i + 2, Status.CREATED, f"c{i}", "b"))
    await store.flush()
    found = store.lookup_many(WS, [(f"c{i}", "n:1") for i in range(80)])
    assert {found[f"c{i}", "n:1"].send_id for i in range(20)} == {"a"}
    assert {found[f"c{i}", "n:1"].send_id for i in range(20, 80)} == {"b"}
    assert {found[f"c{i}", "n:1"].run_id for i in range(20, 80)} == {"run-2"}
    store.close()


async def test_keys_with_odd_characters_are_found(location: Path | str) -> None:
    """Keys holding the separator of the joined lookup, an empty text or quotes are
    looked up like any other (as arrays), alone and in a batch."""
    odd = [("c\x1fx", "s:a"), ("c", "s:\x1f"), ("", "s:e"), ("c", ""), ('c"{,}', "s:\\")]
    store = begin(location, "run-1")
    for i, (campaign, key) in enumerate(odd):
        store.record("run-1", WS, (campaign, key), Outcome(i + 2, Status.CREATED, campaign, "x"))
    await store.flush()
    assert set(store.lookup_many(WS, [*odd, ("c", "s:none")])) == set(odd)
    for pair in odd:
        assert set(store.lookup_many(WS, [pair])) == {pair}
    store.close()


async def test_more_keys_than_one_statement_are_all_found(location: Path | str) -> None:
    """A lookup of 9,000 keys (more than one statement takes) finds every stored one."""
    store = begin(location, "run-1")
    for i in range(0, 9000, 3):
        store.record("run-1", WS, ("c", f"s:{i}"), Outcome(i + 2, Status.CREATED, "c", str(i)))
    await store.flush()
    found = store.lookup_many(WS, [("c", f"s:{i}") for i in range(9000)])
    assert set(found) == {("c", f"s:{i}") for i in range(0, 9000, 3)}
    store.close()


async def test_settles_in_bulk_remove_only_what_they_name(location: Path | str) -> None:
    """Many intents settled in one batch go; a failure settles only this run's intent,
    so an older run's intent on the same key stays (in flight)."""
    old = begin(location, "run-0")
    for i in range(30):
        await old.intent("run-0", WS, (f"old{i}", "n:1"), None, i + 2)
    old.close()  # a run that died with intents in flight
    store = begin(location, "run-1")
    for i in range(60):
        await store.intent("run-1", WS, (f"c{i}", "n:1"), None, i + 2, wait=i % 2 == 0)
    for i in range(60):
        store.record("run-1", WS, (f"c{i}", "n:1"), Outcome(i + 2, Status.CREATED, f"c{i}", "x"))
    for i in range(30):  # failures of rows an older run left in flight
        failure = Outcome(i + 100, Status.FAILED, f"old{i}", None, error="bad_request")
        store.record("run-1", WS, (f"old{i}", "n:1"), failure)
    await store.flush()
    found = store.lookup_many(WS, [(f"c{i}", "n:1") for i in range(60)])
    assert {p.kind for p in found.values()} == {"created"}
    assert len(found) == 60
    stale = store.lookup_many(WS, [(f"old{i}", "n:1") for i in range(30)])
    assert {p.kind for p in stale.values()} == {"in_flight"}
    assert len(stale) == 30
    assert {p.run_id for p in stale.values()} == {"run-0"}
    assert store.open_problems()["in_flight_stale"] == 30
    store.close()


@pytest.fixture
def big_store(pg_url: str) -> str:
    """A PostgreSQL store holding 20,000 created combinations, analysed."""
    open_store(pg_url, lock=False).close()  # creates the schema
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO provisioner.created SELECT %s, 'c' || i, 's:' || i, 'x', 1, 1.0"
            " FROM generate_series(1, 20000) AS i",
            (WS,),
        )
        conn.execute("ANALYZE provisioner.created")
    return pg_url


def test_a_lookup_searches_the_index_once_per_key(big_store: str) -> None:
    """The lookup statement for 2,048 keys is one index search a key, never a scan of
    the whole created table (which a plain join of that many keys became)."""
    keys = [(f"c{i}", f"s:{i}") for i in range(1, 2049)]
    campaigns, names = zip(*keys, strict=True)
    with psycopg.connect(big_store, autocommit=True) as conn:
        plan = "\n".join(
            row[0]
            for row in conn.execute(
                "EXPLAIN " + bulk.lookup_sql("provisioner", True, True),
                {"c": bulk.SEP.join(campaigns), "k": bulk.SEP.join(names), "w": WS},
            )
        )
        rows = bulk.lookup(conn, "provisioner", WS, keys)
    assert "Index Scan using created_pkey on created" in plan, plan
    assert "Seq Scan on created" not in plan, plan
    assert sorted(row[0] for row in rows) == list(range(1, 2049))
