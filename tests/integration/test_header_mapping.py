"""Header near misses and column mappings through the CLI, against the sandbox (issue 13
item 1): every known column, and the mapping given in a config file."""

from __future__ import annotations

from pathlib import Path

from provisioner.sandbox.server import Sandbox

from .helpers import read_jsonl
from .test_cli import provisioner, run_args


async def test_near_miss_workspace_header_stops_the_run(sandbox: Sandbox, tmp_path: Path) -> None:
    """`campaign_id,send_id,Workspace` stops `run` with exit 2 and one line naming the column
    and the --column fix; nothing reaches the sandbox."""
    manifest = tmp_path / "m.csv"
    manifest.write_text("campaign_id,send_id,Workspace\nc1,s1,eu\nc2,s2,eu\n")
    code, _, err = await provisioner(*run_args(sandbox.url, tmp_path, str(manifest)))
    assert code == 2, err
    lines = [line for line in err.splitlines() if "Workspace" in line]
    assert len(lines) == 1, err
    assert "--column workspace=" in lines[0]
    assert sandbox.ledger.total == 0
    assert sandbox.ledger.created == []


async def test_config_columns_map_the_send_id_column(sandbox: Sandbox, tmp_path: Path) -> None:
    """`[manifest] columns = { send_id = "Send ID" }` in the config: each row's send id is its
    "Send ID" value, in results.jsonl and in what the sandbox created."""
    manifest = tmp_path / "m.csv"
    manifest.write_text("campaign_id,Send ID\nc1,s1\nc2,s2\nc3,s3\n")
    config = tmp_path / "c.toml"
    config.write_text('[manifest]\ncolumns = { send_id = "Send ID" }\n')
    code, _, err = await provisioner(
        *run_args(sandbox.url, tmp_path, str(manifest), "--config", str(config))
    )
    assert code == 0, err
    results = read_jsonl(tmp_path / "out" / "results.jsonl")
    assert sorted((r["campaign_id"], r["send_id"]) for r in results) == [
        ("c1", "s1"), ("c2", "s2"), ("c3", "s3"),
    ]  # fmt: skip
    created = sorted((e.campaign_id, e.send_id) for e in sandbox.ledger.created)
    assert created == [("c1", "s1"), ("c2", "s2"), ("c3", "s3")]


async def test_column_flag_send_id_reaches_the_sandbox(sandbox: Sandbox, tmp_path: Path) -> None:
    """`--column send_id="Send ID"` end to end: the sandbox created exactly the mapped send
    ids, and no row failed for a missing send_id."""
    manifest = tmp_path / "m.csv"
    manifest.write_text("campaign_id,Send ID,note\nc1,a-1,x\nc2,a-2,y\n")
    code, _, err = await provisioner(
        *run_args(sandbox.url, tmp_path, str(manifest), "--column", "send_id=Send ID")
    )
    assert code == 0, err
    assert sorted(e.send_id for e in sandbox.ledger.created) == ["a-1", "a-2"]
    assert (tmp_path / "out" / "failures.jsonl").read_bytes() == b""
