"""A wrong base URL is a configuration error, exit 4 `unreachable`, for each way a host can be
wrong (issue 13 item 2): refused is in test_operator_mistakes.py; here the TLS/protocol
handshake (https on an http port) and a name that does not resolve."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest

from provisioner.sandbox.server import Sandbox

from .helpers import campaigns, write_csv
from .test_cli import provisioner, run_args


async def run_against(base_url: str, tmp_path: Path, rows: int = 3) -> tuple[int, str, Any]:
    """Run a small manifest against ``base_url`` with fast retries; (code, stderr, summary)."""
    manifest = write_csv(tmp_path / "m.csv", campaigns(rows))
    config = tmp_path / "c.toml"
    config.write_text("[retry]\nbackoff_base = 0.01\nbackoff_cap = 0.02\n")
    code, _, err = await provisioner(
        *run_args(base_url, tmp_path, str(manifest)), "--config", str(config)
    )
    summary = orjson.loads((tmp_path / "out" / "summary.json").read_bytes())
    return code, err, summary


async def test_https_on_the_sandboxs_http_port_is_unreachable(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """An https:// base URL on the sandbox's plain-HTTP port fails the TLS handshake: the run
    stops with reason `unreachable`, exit 4, its message naming the host and the handshake;
    no row reached the sandbox's ledger and every row is deferred."""
    host = urlsplit(sandbox.url).netloc
    code, err, summary = await run_against(f"https://{host}", tmp_path)
    assert code == 4, err
    (workspace,) = summary["workspaces"]
    assert workspace["stopped"] == "unreachable"
    assert host in workspace["stop_message"]
    assert "TLS/protocol handshake failed" in workspace["stop_message"]
    assert host in err  # the closing lines name it too
    assert summary["counts"]["deferred"] == 3
    assert summary["deferred_reasons"] == {"unreachable": 3}
    assert sandbox.ledger.created == []


def _resolver_answers_fast(name: str) -> bool:
    """Whether this machine's resolver refuses ``name`` within a second (where DNS has no
    server to ask, a lookup can wait out the resolver's timeouts instead)."""
    started = time.monotonic()
    try:
        socket.getaddrinfo(name, 443)
    except socket.gaierror:
        return time.monotonic() - started < 1.0
    return False  # it resolved: a resolver that answers every name; not a DNS failure here


async def test_a_name_that_does_not_resolve_is_unreachable(tmp_path: Path) -> None:
    """A base URL whose host name does not resolve (under .invalid, RFC 2606, so never a real
    host) stops with reason `unreachable`, exit 4, naming the host and DNS."""
    host = "braze-rest.provisioner-test.invalid"
    if not _resolver_answers_fast(host):
        pytest.skip("the resolver here does not refuse a .invalid name within a second")
    code, err, summary = await run_against(f"https://{host}", tmp_path)
    assert code == 4, err
    (workspace,) = summary["workspaces"]
    assert workspace["stopped"] == "unreachable"
    assert host in workspace["stop_message"]
    assert "does not resolve (DNS)" in workspace["stop_message"]
