"""Whole `provisioner run`s on the PostgreSQL store: text PostgreSQL cannot hold (NUL),
derived send_ids, two workspaces' runs at once, and the database lost mid-run and back."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from provisioner.sandbox.server import Sandbox

from .helpers import read_jsonl
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
