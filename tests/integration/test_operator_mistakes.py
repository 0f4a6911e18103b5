"""Ordinary operator mistakes stop the run with a clear signal instead of passing silently
(issue 13): the CLI end to end against the sandbox."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from provisioner.sandbox.server import Sandbox

from .helpers import cli_env, read_jsonl
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


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("rows", [1, 40])
async def test_refused_base_url_stops_with_unreachable_exit_4(tmp_path: Path, rows: int) -> None:
    """A base URL whose port refuses every connection, never having answered, stops with
    reason `unreachable` and exit 4 naming the host and the error (not an outage, exit 3;
    nor, with few rows, exit 1)."""
    from .helpers import campaigns, write_csv

    manifest = write_csv(tmp_path / "m.csv", campaigns(rows))
    config = tmp_path / "c.toml"
    config.write_text("[retry]\nbackoff_base = 0.01\nbackoff_cap = 0.02\n")
    host = f"127.0.0.1:{_closed_port()}"
    code, _, err = await provisioner(
        *run_args(f"http://{host}", tmp_path, str(manifest)), "--config", str(config)
    )
    assert code == 4, err
    summary = orjson.loads((tmp_path / "out" / "summary.json").read_bytes())
    (workspace,) = summary["workspaces"]
    assert workspace["stopped"] == "unreachable"
    assert host in workspace["stop_message"]
    assert "refused" in workspace["stop_message"].lower()
    assert summary["counts"]["deferred"] == rows
    assert host in err


async def test_json_logs_make_every_stderr_line_json(sandbox: Sandbox, tmp_path: Path) -> None:
    """Under --log-format json with --progress always and no terminal, every stderr line is
    a JSON object (progress lines, the closing summary), and --json prints the summary
    document on stdout."""
    from .helpers import campaigns, write_csv

    manifest = write_csv(tmp_path / "m.csv", campaigns(3))
    code, out, err = await provisioner(
        *run_args(sandbox.url, tmp_path, str(manifest)),
        "--log-format", "json", "--progress", "always", "--json",
    )  # fmt: skip
    assert code == 0, err
    events = [orjson.loads(line) for line in err.splitlines()]
    names = [e["event"] for e in events]
    assert "run_summary" in names
    assert "progress_display" in names
    assert orjson.loads(out)["counts"]["created"] == 3


async def test_fatal_error_is_json_under_json_logs(sandbox: Sandbox, tmp_path: Path) -> None:
    """An error that stops the run before it starts is one JSON object under JSON logs."""
    manifest = tmp_path / "m.csv"
    manifest.write_text("campaign,send_id\nc1,s1\n")
    code, _, err = await provisioner(
        *run_args(sandbox.url, tmp_path, str(manifest)), "--log-format", "json"
    )
    assert code == 2
    (line,) = err.splitlines()
    event = orjson.loads(line)
    assert event["event"] == "error"
    assert event["exit_code"] == 2
    assert "campaign_id" in event["message"]


async def test_windows_1252_manifest_is_refused_whole_or_decoded(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """A Windows-1252 export sends nothing (exit 2, the bad line named) rather than its
    ASCII rows only; with --encoding cp1252 every row is sent, values as UTF-8."""
    manifest = tmp_path / "m.csv"
    manifest.write_bytes("campaign_id,send_id,note\nc1,s1,plain\nc2,s2,Café\n".encode("cp1252"))
    code, _, err = await provisioner(*run_args(sandbox.url, tmp_path, str(manifest)))
    assert code == 2, err
    assert "line 3 is not valid UTF-8" in err
    assert sandbox.ledger.total == 0
    code, _, err = await provisioner(
        *run_args(sandbox.url, tmp_path, str(manifest), "--encoding", "cp1252")
    )
    assert code == 0, err
    notes = {r["note"] for r in read_jsonl(tmp_path / "out" / "results.jsonl")}
    assert notes == {"plain", "Café"}


async def test_status_and_export_find_the_store_through_config(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """`status --config` and `export --config` read the [state] path of the config."""
    from .helpers import campaigns, write_csv

    manifest = write_csv(tmp_path / "m.csv", campaigns(2))
    code, _, err = await provisioner(*run_args(sandbox.url, tmp_path, str(manifest), "--json"))
    assert code == 0, err
    config = tmp_path / "c.toml"
    config.write_text(f'[state]\npath = "{tmp_path / "state.sqlite3"}"\n')
    env = cli_env()
    env.pop("PROVISIONER_STATE", None)
    env["XDG_STATE_HOME"] = str(tmp_path / "elsewhere")
    code, out, err = await provisioner("status", "--config", str(config), "--json", env=env)
    assert code == 0, err
    (run,) = orjson.loads(out)["runs"]
    code, _, err = await provisioner(
        "export", "--run", run["run_id"], "--out", str(tmp_path / "again"),
        "--config", str(config), env=env,
    )  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "again" / "summary.json").exists()


async def test_status_into_a_closed_pipe_has_no_traceback(sandbox: Sandbox, tmp_path: Path) -> None:
    """`provisioner status | head -1`: no BrokenPipeError traceback on stderr."""
    import asyncio
    import os
    import sys

    from .helpers import campaigns, write_csv

    manifest = write_csv(tmp_path / "m.csv", campaigns(2))
    assert (await provisioner(*run_args(sandbox.url, tmp_path, str(manifest))))[0] == 0
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has already gone
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "provisioner", "status", "--state", str(tmp_path / "state.sqlite3"),
        stdout=write_end, stderr=asyncio.subprocess.PIPE, env=cli_env(),
    )  # fmt: skip
    os.close(write_end)
    _, err = await proc.communicate()
    assert b"Traceback" not in err, err
    assert b"BrokenPipe" not in err, err
    assert proc.returncode == 141


def test_environment_key_with_trailing_newline_is_stripped() -> None:
    """A key from `kubectl create secret --from-file` ends with a newline: it is stripped,
    as from a key file, not refused."""
    from provisioner._config.access import load_api_key

    key = load_api_key({"BRAZE_API_KEY": "abc-123\n"}, "BRAZE_API_KEY", None)
    assert key.reveal() == "abc-123"
