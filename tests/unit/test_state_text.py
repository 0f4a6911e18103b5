"""Text PostgreSQL's ``text`` cannot hold (U+0000) round-trips through both stores: the
escape of postgres_text.py is reversible and invisible to the store's callers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner._core.models import Outcome, Status
from provisioner._state.opening import open_store
from provisioner._state.postgres_text import ESCAPE, escape, unescape
from provisioner._state.store import SqliteStateStore

from .test_state import WS, location, path  # noqa: F401 (fixtures)

ODD = ["", "a", "\x00", "\x00\x00", ESCAPE, ESCAPE + "0", "\x00" + ESCAPE, "x\x00y\ufdd0z0"]


@pytest.mark.parametrize("text", ODD)
def test_the_escape_is_reversible_and_holds_no_nul(text: str) -> None:
    """escape() leaves no U+0000, unescape() undoes it, and plain text is kept as is."""
    assert "\x00" not in escape(text)
    assert unescape(escape(text)) == text
    assert escape("plain") is escape("plain")


def test_distinct_texts_stay_distinct() -> None:
    """The escape is injective: keys that differ on SQLite differ on PostgreSQL."""
    assert len({escape(t) for t in ODD}) == len(ODD)


@pytest.fixture
def store(location: Path | str) -> Iterator[SqliteStateStore]:  # noqa: F811
    s = open_store(location)
    s.begin_run("run\x00-1", "m\x00.csv", 1000.0, ("campaign_id", "send_id"), {"n": "\x00"})
    yield s
    s.close()


async def test_nul_in_every_stored_text_round_trips(store: SqliteStateStore) -> None:
    """A NUL or U+FDD0 in a campaign_id, key, send_id, message or column is stored and
    read back as it was, on both backends; lookups by such keys find them."""
    run = "run\x00-1"
    odd = "c\x00" + ESCAPE + "0"
    key = (odd, "s:\x00" + ESCAPE)
    await store.intent(run, WS, (odd, "s:in\x00flight"), "in\x00flight", 1)
    outcome = Outcome(
        2, Status.CREATED, odd, "send\x00" + ESCAPE, (("note", "b\x00c"), ("x\x00", ESCAPE))
    )
    store.record(run, WS, key, outcome)
    failed = Outcome(3, Status.FAILED, odd, None, error="server_error", message="m\x00" + ESCAPE)
    store.record(run, WS, None, failed)
    await store.flush()
    assert list(store.iter_outcomes(run)) == [outcome, failed]
    found = store.lookup_many(WS, [key, (odd, "s:\x00")])
    assert found[key].send_id == "send\x00" + ESCAPE
    assert (odd, "s:\x00") not in found
    assert [run.run_id for run in store.recent_runs(5)] == [run]


async def test_postgresql_holds_the_escaped_form(pg_url: str) -> None:
    """What a hand-written query sees on PostgreSQL: U+0000 as U+FDD0 '0', as documented."""
    import psycopg

    s = open_store(pg_url)
    s.begin_run("r", "m", 1.0, None, {})
    s.record("r", WS, ("c\x00", "s:a"), Outcome(1, Status.CREATED, "c\x00", "a"))
    await s.flush()
    s.close()
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT campaign_id FROM provisioner.created").fetchall()
    assert rows == [("c" + ESCAPE + "0",)]
