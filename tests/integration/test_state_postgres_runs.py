"""Whole `provisioner run`s on the PostgreSQL store: text PostgreSQL cannot hold (NUL),
derived send_ids, two workspaces' runs at once, and the database lost mid-run and back."""

from __future__ import annotations

from pathlib import Path

import orjson
import psycopg
import pytest

from provisioner._state import postgres_schema as pg_schema
from provisioner._state.opening import open_store
from provisioner.sandbox.server import Sandbox

from .helpers import campaigns, read_jsonl, write_csv
from .test_cli import provisioner
from .test_state_postgres import no_password, run_args


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
