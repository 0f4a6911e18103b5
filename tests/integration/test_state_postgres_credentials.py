"""Every way the PostgreSQL password may reach the tool (the URL, ``?password=``,
PGPASSWORD, PGPASSFILE, ~/.pgpass, ``?password_file=`` on the command line or in the
config's ``[state] url``) works, and the password appears in no output, log (debug),
output file, summary, status, stored settings or error text."""

from __future__ import annotations

from pathlib import Path

import orjson
import psycopg
import pytest

from provisioner.sandbox.server import Sandbox
from tests.pg_server import PASSWORD, ROLE, PgServer

from .helpers import campaigns, cli_env, write_csv
from .test_cli import provisioner

SOURCES = [
    "url", "url_query", "PGPASSWORD", "PGPASSFILE", "pgpass_in_home", "password_file",
    "password_file_in_config",
]  # fmt: skip


def credentials(
    source: str, server: PgServer, database: str, secrets: Path
) -> tuple[str, dict[str, str], Path | None]:
    """(the --state URL, extra environment, a config file) giving the password by ``source``."""
    bare = server.url(database, password=False)
    env: dict[str, str] = {"HOME": str(secrets / "home")}
    config = None
    line = f"127.0.0.1:{server.port}:*:{ROLE}:{PASSWORD}\n"
    if source == "url":
        return server.url(database), env, None
    if source == "url_query":
        return f"{bare}?password={PASSWORD}", env, None
    if source == "PGPASSWORD":
        env["PGPASSWORD"] = PASSWORD
    elif source == "PGPASSFILE":
        path = secrets / "passfile"
        path.write_text(line)
        path.chmod(0o600)  # libpq ignores a password file others may read
        env["PGPASSFILE"] = str(path)
    elif source == "pgpass_in_home":
        path = secrets / "home" / ".pgpass"
        path.write_text(line)
        path.chmod(0o600)
    else:
        path = secrets / "pw"
        path.write_text(PASSWORD + "\n")
        bare += f"?password_file={path}"
        if source == "password_file_in_config":
            config = secrets / "c.toml"
            config.write_text(f'[state]\nurl = "{bare}"\n')
            return "", env, config
    return bare, env, None


def clean(*texts: str | bytes) -> None:
    for text in texts:
        data = text if isinstance(text, bytes) else text.encode()
        assert PASSWORD.encode() not in data


@pytest.mark.parametrize("source", SOURCES)
async def test_each_password_source_works_and_never_shows(
    source: str, sandbox: Sandbox, tmp_path: Path, pg_server: PgServer
) -> None:
    """A run (debug logs), status and export with the password from ``source``; then the
    same source against a database that does not exist: exit 2. The password is in none
    of their output, the files they wrote, summary.json or the stored settings."""
    secrets = tmp_path / "secrets"
    (secrets / "home").mkdir(parents=True)
    database = f"cred_{source.lower()}"
    pg_server.create_database(database)
    url, extra, config = credentials(source, pg_server, database, secrets)
    env = cli_env()
    for name in ("PGPASSWORD", "PGPASSFILE"):  # only what this source gives
        env.pop(name, None)
    env.update(extra)
    state = ["--state", url] if url else ["--config", str(config)]
    manifest = write_csv(tmp_path / "m.csv", campaigns(3))
    work = tmp_path / "work"
    code, out, err = await provisioner(
        "run", str(manifest), "--out", str(work / "o"), "--base-url", sandbox.url, *state,
        "--log-level", "debug", "--log-format", "json", "--json", env=env,
    )  # fmt: skip
    assert code == 0, err
    clean(out, err)
    assert any(line.get("level") == "debug" for line in map(orjson.loads, err.splitlines()))
    run_id = orjson.loads(out)["run_id"]
    code, out, err = await provisioner("status", "--json", *state, env=env)
    assert code == 0, err
    clean(out, err)
    assert orjson.loads(out)["runs"][0]["run_id"] == run_id
    code, out, err = await provisioner(
        "export", "--run", run_id, "--out", str(work / "again"), *state, env=env
    )
    assert code == 0, err
    clean(out, err)
    for path in work.rglob("*"):
        if path.is_file():
            clean(path.read_bytes())
    with psycopg.connect(pg_server.url(database)) as conn:
        stored = conn.execute("SELECT settings, summary FROM provisioner.runs").fetchall()
    clean(*(text for row in stored for text in row))
    if config is not None:
        config.write_text(config.read_text().replace(f"/{database}", "/no_such_db"))
    else:
        state = ["--state", url.replace(f"/{database}", "/no_such_db")]
    code, out, err = await provisioner("status", *state, env=env)
    assert code == 2, err
    assert "no_such_db" in err
    clean(out, err)


@pytest.mark.parametrize("grant", ["owns_schema", "create_on_database"])
async def test_the_documented_permissions_suffice(
    grant: str, sandbox: Sandbox, tmp_path: Path, pg_server: PgServer
) -> None:
    """The README's setup (a role that may connect and owns its schema, or may create it,
    in a database someone else owns) is enough to run, skip and report."""
    role, database = f"minimal_{grant}", f"perm_{grant}"
    pg_server.admin(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
    pg_server.admin(f'CREATE DATABASE "{database}"')  # owned by the superuser
    pg_server.admin(f"REVOKE ALL ON DATABASE {database} FROM PUBLIC")
    pg_server.admin(f"GRANT CONNECT ON DATABASE {database} TO {role}")
    if grant == "owns_schema":
        pg_server.admin(f"CREATE SCHEMA provisioner AUTHORIZATION {role}", database)
    else:
        pg_server.admin(f"GRANT CREATE ON DATABASE {database} TO {role}")
    url = f"postgresql://{role}:{PASSWORD}@127.0.0.1:{pg_server.port}/{database}"
    manifest = write_csv(tmp_path / "m.csv", campaigns(3))
    for out in ("o1", "o2"):
        code, _, err = await provisioner(
            "run", str(manifest), "--out", str(tmp_path / out), "--base-url", sandbox.url,
            "--state", url,
        )  # fmt: skip
        assert code == 0, err
    assert len(sandbox.ledger.created) == 3
    code, _, err = await provisioner("status", "--state", url)
    assert code == 0, err
