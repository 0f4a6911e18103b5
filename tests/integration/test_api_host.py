"""The Python API inside a host program (issue 13): it logs through the host's stdlib
``logging``, writes nothing to stdout itself, and fails tasks on request."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import orjson

from provisioner.sandbox.server import Sandbox

from .helpers import PYTHON, ROOT, campaigns, cli_env, write_csv

_HOST = """
import json, logging, sys
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append([record.name, record.levelname, record.getMessage(),
                        getattr(record, "provisioner_event", None)])
logging.basicConfig(level=logging.INFO, handlers=[Keep()])
from provisioner.api import RunFailed, build_settings, run
settings = build_settings(manifest=sys.argv[1], out_dir=sys.argv[2],
    cli={"base_url": sys.argv[3], "state_path": sys.argv[4], "rate": 5000.0})
result = run(settings)
failed = None
try:
    result.raise_for_status()
except RunFailed as exc:
    failed = [exc.exit_code, exc.result.run_id == result.run_id, str(exc)]
print(json.dumps({"records": records, "created": result.summary["counts"]["created"],
                  "failed": failed}), file=sys.stderr)
"""


async def _host(sandbox: Sandbox, tmp_path: Path, manifest: Path) -> tuple[str, dict[str, object]]:
    proc = await asyncio.create_subprocess_exec(
        PYTHON, "-c", _HOST, str(manifest), str(tmp_path / "out"), sandbox.url,
        str(tmp_path / "state.sqlite3"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=cli_env(), cwd=ROOT,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode(), orjson.loads(err.decode().strip().splitlines()[-1])


async def test_api_logs_through_the_hosts_logging_and_not_stdout(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Events reach the host's logging handlers (logger names under "provisioner", the
    event as a record attribute); nothing is printed on stdout; a clean run passes
    raise_for_status."""
    manifest = write_csv(tmp_path / "m.csv", campaigns(3))
    out, report = await _host(sandbox, tmp_path, manifest)
    assert out == ""
    records = report["records"]
    assert isinstance(records, list)
    events = {r[3] for r in records}
    assert {"run_started", "run_finished"} <= events
    assert all(r[0].startswith("provisioner") for r in records)
    assert any(r[2].startswith("run_started run_id=") for r in records)
    assert report["created"] == 3
    assert report["failed"] is None


async def test_raise_for_status_raises_run_failed_carrying_the_result(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """A run with failed rows makes raise_for_status raise RunFailed with its exit code
    and the result."""
    manifest = tmp_path / "m.csv"
    manifest.write_text("campaign_id,send_id\nc1,s1\n,s2\n")
    _, report = await _host(sandbox, tmp_path, manifest)
    failed = report["failed"]
    assert isinstance(failed, list)
    assert failed[0] == 1
    assert failed[1] is True
    assert "exit code 1" in failed[2]


def test_summary_is_typed() -> None:
    """RunResult.summary is a TypedDict (RunSummary) with the summary.json keys."""
    from provisioner.api import RunResult, RunSummary

    assert RunResult.__annotations__["summary"] in ("RunSummary", RunSummary)
    assert {"counts", "exit_code", "workspaces"} <= set(RunSummary.__annotations__)
    assert sys.modules["provisioner.api"].RunSummary is RunSummary
