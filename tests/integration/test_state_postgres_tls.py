"""TLS to the database with ``sslmode`` as libpq users expect: a throwaway server with
``ssl = on`` (a certificate from a throwaway CA) that accepts TCP clients over TLS only;
``require`` and ``verify-full`` with the right CA connect, ``verify-full`` with another
CA and ``require`` against a server without TLS are clear exit-2 refusals without the
password."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import trustme

from tests.pg_server import PASSWORD, PgServer, find_binaries, start_server

from .helpers import cli_env
from .test_cli import provisioner


@dataclass(frozen=True)
class TlsServer:
    server: PgServer
    ca: Path  # the CA that signed the server's certificate
    wrong_ca: Path  # another CA

    def url(self, query: str) -> str:
        return f"{self.server.url('tls')}?{query}"


@pytest.fixture(scope="module")
def tls_server() -> Iterator[TlsServer]:
    """A server with ``ssl = on`` whose pg_hba.conf takes TCP clients over TLS only."""
    if find_binaries(ssl=True) is None:
        pytest.skip("no PostgreSQL build with TLS support (Debian's postgresql package has it)")
    folder = Path(tempfile.mkdtemp(prefix="provisioner-pg-tls-"))
    try:
        ca, wrong = trustme.CA(), trustme.CA()
        issued = ca.issue_cert("127.0.0.1", "localhost")
        files = folder / "files"
        files.mkdir()
        cert, key = files / "server.pem", files / "server.key"
        cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        issued.private_key_pem.write_to_path(str(key))
        ca.cert_pem.write_to_path(str(files / "ca.pem"))
        wrong.cert_pem.write_to_path(str(files / "wrong.pem"))
        server = start_server(folder / "server", tls=(cert, key))
        hba = server.data / "pg_hba.conf"
        lines = hba.read_text().splitlines()
        hba.write_text("\n".join(f"hostssl{x[4:]}" if x.startswith("host ") else x for x in lines))
        server.admin("SELECT pg_reload_conf()")
        server.create_database("tls")
        yield TlsServer(server, files / "ca.pem", files / "wrong.pem")
        server.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def status(url: str) -> tuple[int, str]:
    env = cli_env({"PROVISIONER_LOG_LEVEL": "debug"})
    code, out, err = await provisioner("status", "--state", url, env=env)
    assert PASSWORD not in out + err
    return code, err


def test_the_server_takes_tls_clients_only(tls_server: TlsServer) -> None:
    """The fixture's own check: without TLS the server refuses (so a success below went
    over TLS), with it the session is encrypted."""
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(tls_server.url("sslmode=disable")).close()
    with psycopg.connect(tls_server.url("sslmode=require")) as conn:
        row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    assert row == (True,)


async def test_sslmode_require_connects(tls_server: TlsServer) -> None:
    """?sslmode=require: the tool connects over TLS (status exits 0)."""
    code, err = await status(tls_server.url("sslmode=require"))
    assert code == 0, err


async def test_verify_full_with_the_right_ca_connects(tls_server: TlsServer) -> None:
    """?sslmode=verify-full&sslrootcert=CA: the certificate is checked, and it passes."""
    code, err = await status(tls_server.url(f"sslmode=verify-full&sslrootcert={tls_server.ca}"))
    assert code == 0, err


async def test_verify_full_with_another_ca_is_refused(tls_server: TlsServer) -> None:
    """verify-full against a CA that did not sign the server's certificate: exit 2, one
    line naming the database (without its password), the TLS failure and the fix."""
    url = tls_server.url(f"sslmode=verify-full&sslrootcert={tls_server.wrong_ca}")
    code, err = await status(url)
    assert code == 2, err
    assert err.count("\n") == 1
    assert f"postgresql://prov@127.0.0.1:{tls_server.server.port}/tls" in err
    assert "certificate verify failed" in err
    assert "pass sslrootcert=PATH of the CA that signed it" in err


async def test_require_against_a_server_without_tls_is_refused(pg_server: PgServer) -> None:
    """sslmode=require against the plain fixture server: exit 2, a clear one-line refusal
    saying the server does not offer TLS, without the password."""
    code, err = await status(f"{pg_server.url('postgres')}?sslmode=require")
    assert code == 2, err
    assert err.count("\n") == 1
    assert "server does not support SSL" in err
    assert "the server does not offer TLS: turn ssl on" in err
