"""Where the key may go: never after a redirect, never to a server whose certificate fails
verification, and a custom CA only when the config names it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from provisioner.api import run_pipeline
from provisioner.sandbox.server import FaultRule
from tests.conftest import SandboxFactory, TlsFiles

from .helpers import (
    KEY,
    PYTHON,
    ROOT,
    assert_invariant,
    campaigns,
    cli_env,
    outputs,
    settings_for,
    write_csv,
)


class OtherHost:
    """A plain HTTP server standing for "another host": it records every request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str | None]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        """Record method, path and Authorization header; answer like a success."""
        await request.read()
        self.requests.append((request.method, request.path, request.headers.get("Authorization")))
        return web.json_response({"message": "success", "send_id": "stolen"}, status=201)


@pytest.fixture
async def other_host() -> AsyncIterator[OtherHost]:
    """The other host, on its own loopback port, stopped at teardown."""
    other = OtherHost()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", other.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    other.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield other
    await runner.cleanup()


def all_output_text(out: Path) -> str:
    """Every output file's text, to look for the key in."""
    return "".join(p.read_text(encoding="utf-8") for p in sorted(out.iterdir()))


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirect_to_another_host_is_never_followed(
    sandbox_factory: SandboxFactory, other_host: OtherHost, tmp_path: Path, status: int
) -> None:
    """A 3xx to another host: the other host gets no request at all, the workspace stops
    (exit 4, every row deferred as `redirected`), and the message names the status and the
    target host, never its query or the key."""
    sandbox = await sandbox_factory()
    location = f"{other_host.url}/sends/id/create?token=t0k3n"
    sandbox.add_faults([FaultRule("redirect", status=status, location=location)])
    manifest = write_csv(tmp_path / "m.csv", campaigns(30))
    result = await run_pipeline(settings_for(sandbox.url, tmp_path, manifest, concurrency=4))
    assert other_host.requests == []
    assert result.exit_code == 4
    results, failures, deferred, summary = outputs(tmp_path / "out")
    assert (results, failures) == ([], [])
    assert len(deferred) == 30
    assert summary["deferred_reasons"] == {"redirected": 30}
    assert summary["requests"] <= 4  # stopped at once: only what was already in flight
    assert sandbox.ledger.created == []
    (ws,) = summary["workspaces"]
    message = ws["stop_message"]
    assert str(status) in message
    assert other_host.url in message  # scheme://host:port of the target
    assert "base_url" in message
    assert "t0k3n" not in message
    assert ws["windows_needed"] is None  # more quota windows would not help
    assert KEY not in all_output_text(tmp_path / "out")
    assert_invariant(tmp_path / "out", 30)


async def test_redirect_mid_run_keeps_what_was_created(
    sandbox_factory: SandboxFactory, other_host: OtherHost, tmp_path: Path
) -> None:
    """A redirect after some rows were created: those stay created, the rest is deferred,
    and the next run (redirect gone) skips the created ones and sends only the rest."""
    sandbox = await sandbox_factory()
    sandbox.add_faults([FaultRule("redirect", campaign_id="c000005", location=other_host.url)])
    manifest = write_csv(tmp_path / "m.csv", campaigns(20))
    settings = settings_for(sandbox.url, tmp_path, manifest, concurrency=1)
    result = await run_pipeline(settings)
    assert result.exit_code == 4
    results, _, deferred, summary = outputs(tmp_path / "out")
    assert [r["campaign_id"] for r in results] == [f"c{i:06d}" for i in range(5)]
    assert len(deferred) == 15
    assert summary["deferred_reasons"] == {"redirected": 15}
    assert other_host.requests == []
    sandbox.clear_faults()
    again = await run_pipeline(settings)
    assert again.exit_code == 0
    assert {k: n for k, n in again.counts.items() if n} == {"created": 15, "skipped": 5}
    assert len(sandbox.ledger.created) == 20


@pytest.fixture
async def tls_sandbox_url(sandbox_factory: SandboxFactory, tls_files: TlsFiles) -> str:
    """An https sandbox whose certificate was signed by the session's throw-away CA."""
    sandbox = await sandbox_factory(tls_cert=str(tls_files.cert), tls_key=str(tls_files.key))
    return sandbox.url


async def test_untrusted_certificate_stops_before_sending(
    sandbox_factory: SandboxFactory, tls_files: TlsFiles, tmp_path: Path
) -> None:
    """A certificate the client does not trust: the handshake fails, no request reaches
    the server, nothing is retried, every row (with or without a send_id) is deferred as
    `certificate_failed` with exit 4 and a message naming the host and the fix; with
    ca_file naming the CA the next run creates every row, none in doubt."""
    sandbox = await sandbox_factory(tls_cert=str(tls_files.cert), tls_key=str(tls_files.key))
    rows = campaigns(10) + campaigns(10, with_send_id=False, prefix="n")
    manifest = write_csv(tmp_path / "m.csv", rows)
    result = await run_pipeline(settings_for(sandbox.url, tmp_path, manifest, concurrency=4))
    assert result.exit_code == 4
    _, failures, deferred, summary = outputs(tmp_path / "out")
    assert failures == []
    assert len(deferred) == 20
    assert summary["deferred_reasons"] == {"certificate_failed": 20}
    assert summary["retries"] == 0
    assert summary["requests"] <= 4
    assert sandbox.ledger.total == 0  # not one HTTP request got through
    host = sandbox.url.removeprefix("https://")
    message = summary["workspaces"][0]["stop_message"]
    assert f"certificate verify failed for host {host}" in message
    assert "ca_file" in message
    assert_invariant(tmp_path / "out", 20)

    trusted = settings_for(sandbox.url, tmp_path, manifest, ca_file=str(tls_files.ca))
    again = await run_pipeline(trusted)
    assert again.exit_code == 0
    assert {k: n for k, n in again.counts.items() if n} == {"created": 20}
    assert len(sandbox.ledger.created) == 20


async def test_certificate_for_another_name_is_refused(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """A certificate from a trusted CA but for another host name fails verification too:
    trusting a CA does not trust every name it signed."""
    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert("rest.example.test")
    cert, key, bundle = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(bundle))
    sandbox = await sandbox_factory(tls_cert=str(cert), tls_key=str(key))
    manifest = write_csv(tmp_path / "m.csv", campaigns(5))
    settings = settings_for(sandbox.url, tmp_path, manifest, ca_file=str(bundle))
    result = await run_pipeline(settings)
    assert result.exit_code == 4
    _, _, deferred, summary = outputs(tmp_path / "out")
    assert len(deferred) == 5
    assert "mismatch" in summary["workspaces"][0]["stop_message"].lower()
    assert sandbox.ledger.total == 0


async def test_cli_names_the_certificate_problem(
    tls_sandbox_url: str, tls_files: TlsFiles, tmp_path: Path
) -> None:
    """From cron: exit 4 and a stderr line naming the host and ca_file, then with
    PROVISIONER_CA_FILE set the same command succeeds."""
    manifest = write_csv(tmp_path / "m.csv", campaigns(3))
    args = [
        "-m", "provisioner", "run", str(manifest), "--out", str(tmp_path / "out"),
        "--base-url", tls_sandbox_url, "--state", str(tmp_path / "state.sqlite3"),
        "--log-format", "json",
    ]  # fmt: skip

    async def run_cli(env: dict[str, str]) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            PYTHON, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=env, cwd=ROOT,
        )  # fmt: skip
        _, err = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, err.decode()

    code, err = await run_cli(cli_env())
    assert code == 4
    host = tls_sandbox_url.removeprefix("https://")
    # Under --log-format json the closing lines come as the run_summary event's "lines".
    closing = [
        line
        for event in map(orjson.loads, err.splitlines())
        if event.get("event") == "run_summary"
        for line in event["lines"]
    ]
    named = [line for line in closing if f"certificate verify failed for host {host}" in line]
    assert any(line.startswith("  workspace default stopped:") for line in named)
    rejected = [line for line in err.splitlines() if f"verify failed for host {host}" in line]
    events = [orjson.loads(line) for line in rejected]
    assert [e["event"] for e in events] == ["certificate_rejected", "run_summary"]
    assert KEY not in err
    code, err = await run_cli(cli_env({"PROVISIONER_CA_FILE": str(tls_files.ca)}))
    assert code == 0, err
