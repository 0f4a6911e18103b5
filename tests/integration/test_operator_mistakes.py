"""Ordinary operator mistakes stop the run with a clear signal instead of passing silently
(issue 13): the CLI end to end against the sandbox."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.sandbox.server import Sandbox

from .helpers import read_jsonl
from .test_cli import provisioner, run_args


@pytest.mark.parametrize("command", ["run", "validate"])
async def test_near_miss_send_id_header_stops_run_and_validate(
    sandbox: Sandbox, tmp_path: Path, command: str
) -> None:
    """`campaign_id,Send ID` stops `run` and `validate` with exit 2 and one line naming the
    column and the fix; nothing is sent."""
    manifest = tmp_path / "m.csv"
    manifest.write_text("campaign_id,Send ID\nc1,s1\n")
    args = (
        run_args(sandbox.url, tmp_path, str(manifest))
        if command == "run"
        else ["validate", str(manifest), "--state", str(tmp_path / "state.sqlite3")]
    )
    code, _, err = await provisioner(*args)
    assert code == 2, err
    lines = [line for line in err.splitlines() if "Send ID" in line]
    assert len(lines) == 1, err
    assert "--column send_id=" in lines[0]
    assert sandbox.ledger.total == 0


async def test_column_flag_maps_the_send_id_column(sandbox: Sandbox, tmp_path: Path) -> None:
    """With --column send_id="Send ID" the column's values are the send ids Braze gets."""
    manifest = tmp_path / "m.csv"
    manifest.write_text("campaign_id,Send ID\nc1,s1\nc2,s2\n")
    code, _, err = await provisioner(
        *run_args(sandbox.url, tmp_path, str(manifest), "--column", "send_id=Send ID")
    )
    assert code == 0, err
    sent = sorted(r["send_id"] for r in read_jsonl(tmp_path / "out" / "results.jsonl"))
    assert sent == ["s1", "s2"]
