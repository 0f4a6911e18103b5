"""Start-up: each command imports only what it uses (BENCHMARKS.md, "Start-up").

The command runs in a child process that then prints which of the optional or heavy
modules it loaded: the terminal display's rich, prometheus_client, psycopg and the
sandbox's server must stay out of a plain run (no metrics file, no terminal, a SQLite
store), and `--help` must not load the run's machinery at all.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import orjson
import pytest

from provisioner.sandbox.server import Sandbox

from .helpers import PYTHON, ROOT, cli_env, write_csv
from .test_cli import run_args

#: Runs ``main(argv)`` in-process, then prints the loaded modules of interest as JSON.
_LOADED = """
import sys
from provisioner._cli.main import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:  # --help
    code = exc.code
roots = ("rich", "prometheus_client", "psycopg", "provisioner.sandbox", "structlog",
         "asyncio", "aiohttp", "provisioner._pipeline")
loaded = sorted({m for m in sys.modules if m.startswith(roots) and sys.modules[m] is not None})
print(__import__("json").dumps({"code": code, "loaded": loaded}), file=sys.stderr)
"""


async def loaded_by(*args: str) -> tuple[int, set[str]]:
    """(exit code, top-level names of the modules of interest) for ``provisioner ARGS``."""
    proc = await asyncio.create_subprocess_exec(
        PYTHON, "-c", _LOADED, *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL, env=cli_env(), cwd=ROOT,
    )  # fmt: skip
    _, err = await proc.communicate()
    report = orjson.loads(err.decode().strip().splitlines()[-1])
    loaded = report["loaded"]
    names = {m.split(".")[0] for m in loaded}
    names |= {".".join(m.split(".")[:2]) for m in loaded if m.startswith("provisioner.")}
    return report["code"], names


async def test_a_plain_run_imports_no_display_metrics_postgres_or_sandbox(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """A 100-row run with no metrics file, no terminal and a SQLite store loads neither
    rich, prometheus_client, psycopg nor the sandbox's modules."""
    manifest = write_csv(tmp_path / "m.csv", [(f"c{i % 3}", f"s{i}") for i in range(100)])
    code, names = await loaded_by(*run_args(sandbox.url, tmp_path, str(manifest)))
    assert code == 0
    assert "aiohttp" in names  # the check sees what a run does load
    assert not names & {"rich", "prometheus_client", "psycopg", "provisioner.sandbox"}, names


async def test_a_run_with_a_metrics_file_imports_prometheus_client(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Imported on demand, not removed: a metrics file brings prometheus_client in."""
    manifest = write_csv(tmp_path / "m.csv", [("c1", "s1")])
    metrics = str(tmp_path / "run.prom")
    code, names = await loaded_by(
        *run_args(sandbox.url, tmp_path, str(manifest), "--metrics-file", metrics)
    )
    assert code == 0
    assert "prometheus_client" in names
    assert "rich" not in names


async def test_help_imports_neither_asyncio_nor_logging_nor_the_pipeline() -> None:
    """`provisioner --help` parses arguments only: no asyncio, structlog, aiohttp or
    pipeline (they were ~200 ms of its start-up)."""
    code, names = await loaded_by("--help")
    assert code == 0
    assert not names & {"asyncio", "structlog", "aiohttp", "rich", "provisioner._pipeline"}, names
    code, names = await loaded_by("run", "--help")
    assert code == 0
    assert "structlog" not in names


def test_a_plain_http_client_loads_no_ca_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """A loopback http:// client builds no TLS context (the CA store costs ~30 ms of a
    run's start-up); an https:// one always does, and verifies."""
    from provisioner._braze import client
    from provisioner._config.access import ApiKey

    built: list[str | None] = []
    real = client.tls_context

    def counting(ca_file: str | None = None) -> ssl.SSLContext:
        built.append(ca_file)
        return real(ca_file)

    monkeypatch.setattr(client, "tls_context", counting)
    client.BrazeClient("http://127.0.0.1:9", ApiKey("k"))
    assert built == []
    client.BrazeClient("https://rest.iad-01.braze.com", ApiKey("k"))
    assert built == [None]
