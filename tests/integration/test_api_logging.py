"""The Python API leaves the host's logging as it found it (issue 13 item 7): no handler,
level or format changed, records reach the host's handlers and never stdout, also with
``cli={"log_format": "json"}`` as examples/airflow_task.py passes; and a run that deferred
rows fails the task only when asked to."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson

from tests.conftest import SandboxFactory

from .helpers import PYTHON, ROOT, campaigns, cli_env, write_csv

_HOST = """
import json, logging, sys

records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append([record.name, record.levelname, self.format(record)])

keep = Keep(level=logging.DEBUG)
keep.setFormatter(logging.Formatter("HOST %(levelname)s %(name)s: %(message)s"))
logging.root.addHandler(keep)
logging.root.setLevel(logging.INFO)
logging.getLogger("host.app").setLevel(logging.WARNING)

def snapshot():
    def handlers(logger):
        return [[type(h).__name__, id(h), h.level, id(h.formatter),
                 getattr(h.formatter, "_fmt", None)] for h in logger.handlers]
    named = {name: [lg.level, lg.propagate, lg.disabled, handlers(lg)]
             for name, lg in sorted(logging.root.manager.loggerDict.items())
             if isinstance(lg, logging.Logger) and (lg.handlers or lg.level or lg.disabled)}
    return {"root": [logging.root.level, handlers(logging.root)], "named": named,
            "disable": logging.root.manager.disable, "last_resort": id(logging.lastResort),
            "provisioner": [logging.getLogger("provisioner").level,
                            logging.getLogger("provisioner").propagate,
                            handlers(logging.getLogger("provisioner"))]}

before = snapshot()
from provisioner.api import RunFailed, build_settings, run
settings = build_settings(manifest=sys.argv[1], out_dir=sys.argv[2],
    cli={"base_url": sys.argv[3], "state_path": sys.argv[4], "rate": 5000.0,
         "log_format": "json"})
result = run(settings)
after = snapshot()
passes = result.raise_for_status() is result
try:
    result.raise_for_status(allow_deferred=False)
    strict = None
except RunFailed as exc:
    strict = exc.exit_code
print(json.dumps({"before": before, "after": after, "records": records,
                  "exit_code": result.exit_code, "passes": passes, "strict": strict}),
      file=sys.stderr)
"""


async def host_run(url: str, tmp_path: Path, manifest: Path) -> tuple[bytes, Any]:
    """Run the host script: (its stdout, its report)."""
    proc = await asyncio.create_subprocess_exec(
        PYTHON, "-c", _HOST, str(manifest), str(tmp_path / "out"), url,
        str(tmp_path / "state.sqlite3"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=cli_env(), cwd=ROOT,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out, orjson.loads(err.decode().strip().splitlines()[-1])


async def test_a_run_leaves_the_hosts_logging_untouched(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """With cli={"log_format": "json"} a run through the API writes nothing on stdout; the
    root's and every logger's handlers, levels and formatters are the same after it as
    before; its records reached the host's handler, formatted by the host's format; a run
    that deferred rows (exit 3) passes raise_for_status() and fails it with
    allow_deferred=False."""
    sandbox = await sandbox_factory(daily_quota=2)
    manifest = write_csv(tmp_path / "m.csv", campaigns(5))
    out, report = await host_run(sandbox.url, tmp_path, manifest)
    assert out == b""
    assert report["after"] == report["before"]
    assert report["after"]["provisioner"] == [0, True, []]  # no handler, level or cut-off
    records = report["records"]
    assert records
    assert all(name.startswith("provisioner") for name, _, _ in records)
    assert any(text.startswith("HOST INFO provisioner") and "run_started" in text
               for _, _, text in records)  # fmt: skip
    assert report["exit_code"] == 3
    assert report["passes"] is True
    assert report["strict"] == 3
