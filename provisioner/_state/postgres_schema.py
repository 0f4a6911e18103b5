"""Everything SQL (and URL) for the PostgreSQL state store: locations, redaction, error
translation, DDL and migrations, and the PostgreSQL form of each writer statement.

The writer queues the SQLite statements of ``schema.py`` (``batch.sort_batch`` knows
them by identity); :data:`STATEMENTS` maps each to its PostgreSQL form and :data:`FIXES`
reshapes the parameters where the tables differ (PostgreSQL has no column that holds an
integer or a text, so ``created_run`` and ``columns`` are split in two).

Every table name is qualified with the store's schema: ``search_path`` set on a session
would be lost behind PgBouncer's transaction pooling.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["redact_url"]  # re-exported: callers of this module redact with it

from provisioner._core.redact import redact_url
from provisioner._state import schema
from provisioner._state.postgres_lease import DDL as LEASE_DDL
from provisioner.errors import StateError

URL_SCHEMES = ("postgresql://", "postgres://")
DEFAULT_SCHEMA = "provisioner"
APPLICATION = "provisioner"
_IDENT = re.compile(r"[a-z_][a-z0-9_]{0,62}")
#: Query parameters the tool reads itself and does not pass to libpq.
_OWN_PARAMS = ("schema", "password_file", "lease_s")


def is_url(location: object) -> bool:
    """Whether a --state value names a PostgreSQL database rather than a SQLite file."""
    return isinstance(location, str) and location.lower().startswith(URL_SCHEMES)


@dataclass(frozen=True, slots=True)
class Location:
    """A parsed --state URL: what libpq gets, what the tool shows, and our own options."""

    conninfo: str  # the URL for libpq (password kept, our own parameters removed)
    shown: str  # redact_url(): safe for logs and messages
    schema: str
    password: str | None  # read from password_file=, else None (libpq finds its own)
    secrets: tuple[str, ...]  # every password this location knows, scrubbed from texts
    lease_s: float = 30.0  # ?lease_s=: how long a run's lease lasts without a heartbeat


def parse_location(url: str) -> Location:
    """Parse ``url``; ``?schema=NAME`` picks the schema, ``?password_file=PATH`` a file
    whose first line is the password. Raises StateError for a bad schema or file."""
    shown = redact_url(url)
    parts = urlsplit(url)
    params = parse_qsl(parts.query, keep_blank_values=True)
    own = {k: v for k, v in params if k in _OWN_PARAMS}
    rest = [(k, v) for k, v in params if k not in _OWN_PARAMS]
    name = own.get("schema", DEFAULT_SCHEMA)
    if not _IDENT.fullmatch(name):
        raise StateError(
            f"state store {shown}: schema {name!r} is not a plain lowercase identifier;"
            " pass ?schema=NAME of letters, digits and underscores"
        )
    secrets = [s for s in (parts.password, *(v for k, v in rest if k == "password")) if s]
    password = None
    if "password_file" in own:
        path = Path(own["password_file"]).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise StateError(
                f"state store {shown}: cannot read password_file {path} ({exc.strerror});"
                " fix the path or its permissions"
            ) from None
        password = lines[0] if lines else ""
        secrets.append(password)
    try:
        lease_s = float(own.get("lease_s", "30"))
    except ValueError:
        lease_s = -1.0
    if not 1.0 <= lease_s <= 3600.0:
        raise StateError(
            f"state store {shown}: lease_s={own.get('lease_s')!r} is not a number of seconds"
            " from 1 to 3600; fix the URL's lease_s parameter"
        )
    conninfo = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(rest), ""))
    return Location(conninfo, shown, name, password, tuple(s for s in secrets if s), lease_s)


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` on one line with every known password replaced (psycopg's messages can
    quote the conninfo)."""
    text = " ".join(text.split())
    for secret in secrets:
        text = text.replace(secret, "***")
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", text, flags=re.IGNORECASE)


def describe(location: Location, exc: BaseException, doing: str) -> StateError:
    """The one place psycopg errors become StateError: one line, redacted, with a fix."""
    detail = scrub(str(exc), location.secrets) or type(exc).__name__
    return StateError(f"state store {location.shown}: {doing} failed ({detail}); {_fix(detail)}")


def _fix(detail: str) -> str:
    """The way out of a failure, TLS ones told apart (libpq's words name them)."""
    lowered = detail.lower()
    if "does not support ssl" in lowered:
        return (
            "the server does not offer TLS: turn ssl on in its configuration, or use a"
            " weaker sslmode (prefer) only on a trusted network"
        )
    if "certificate" in lowered:
        return (
            "the server's certificate did not pass verification: pass sslrootcert=PATH of"
            " the CA that signed it, and a host name the certificate names (verify-full)"
        )
    if "ssl" in lowered:
        return "check sslmode, sslrootcert, sslcert and sslkey in the URL, then run again"
    return "check that the database is reachable and the role may use it, then run again"


# -- DDL: version 1 mirrors schema._V1 in PostgreSQL types ({s} is the schema)

_V1 = (
    "CREATE TABLE {s}.meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE {s}.runs (
        seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, run_id TEXT NOT NULL UNIQUE,
        manifest TEXT NOT NULL, pid INTEGER NOT NULL, started_at DOUBLE PRECISION NOT NULL,
        finished_at DOUBLE PRECISION, exit_code INTEGER, counts TEXT NOT NULL DEFAULT '{{}}',
        summary TEXT NOT NULL DEFAULT '{{}}', deferred_header TEXT,
        settings TEXT NOT NULL DEFAULT '{{}}')""",
    """CREATE TABLE {s}.created (
        workspace TEXT NOT NULL, campaign_id TEXT NOT NULL, key TEXT NOT NULL,
        send_id TEXT NOT NULL, run_seq BIGINT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (workspace, campaign_id, key))""",
    """CREATE TABLE {s}.intents (
        workspace TEXT NOT NULL, campaign_id TEXT NOT NULL, key TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('in_flight', 'in_doubt')),
        run_seq BIGINT NOT NULL, at DOUBLE PRECISION NOT NULL, send_id TEXT,
        line BIGINT NOT NULL, PRIMARY KEY (workspace, campaign_id, key))""",
    # created_run and columns each take one of two columns (see FIXES).
    """CREATE TABLE {s}.outcomes (
        run_seq BIGINT NOT NULL, workspace TEXT, key TEXT, status TEXT NOT NULL,
        created_seq BIGINT, created_text TEXT, columns TEXT, columns_bin BYTEA,
        line BIGINT NOT NULL, campaign_id TEXT, send_id TEXT, attempts INTEGER NOT NULL,
        http_status INTEGER, latency_ms DOUBLE PRECISION, error TEXT, message TEXT,
        retryable INTEGER NOT NULL, field TEXT, duplicate_of BIGINT, reason TEXT,
        created_at DOUBLE PRECISION, PRIMARY KEY (run_seq, line))""",
    "CREATE INDEX outcomes_deferred ON {s}.outcomes (run_seq) WHERE status = 'deferred'",
    """CREATE TABLE {s}.quota_windows (
        workspace TEXT NOT NULL, reset_at DOUBLE PRECISION NOT NULL,
        quota_limit INTEGER NOT NULL, remaining INTEGER NOT NULL, spent INTEGER NOT NULL,
        PRIMARY KEY (workspace, reset_at))""",
    LEASE_DDL,
)

#: Version 2 mirrors migrations.v2_pruned_at: the time retention pruned a run.
_V2_PRUNED_AT = ("ALTER TABLE {s}.runs ADD COLUMN pruned_at DOUBLE PRECISION",)

#: MIGRATIONS[i] takes a schema from version i to i + 1 (0: no tables yet).
MIGRATIONS: list[tuple[str, ...]] = [_V1, _V2_PRUNED_AT]


def schema_version() -> int:
    return len(MIGRATIONS)


def prepare(conn: Any, location: Location) -> None:
    """Create or upgrade the store's schema in one transaction, under a transaction-level
    advisory lock, so two hosts starting at once on an empty database take turns."""
    s = location.schema
    with conn.transaction():
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"{APPLICATION}:{s}",)
        )
        tables = {
            row[0]
            for row in conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v')",
                (s,),
            )
        }
        version = 0
        if tables:
            if "meta" not in tables:
                raise StateError(
                    f"state store {location.shown}: schema {s!r} holds another application's"
                    f" tables ({', '.join(sorted(tables)[:5])}); pass ?schema=NAME of an"
                    " empty or provisioner schema"
                )
            meta = dict(conn.execute(f"SELECT name, value FROM {s}.meta").fetchall())
            if meta.get("application") != APPLICATION or not meta.get("version", "").isdigit():
                raise StateError(
                    f"state store {location.shown}: schema {s!r} is not a provisioner store"
                    " (its meta table does not say so); pass ?schema=NAME of another schema"
                )
            version = int(meta["version"])
        if version > schema_version():
            raise StateError(
                f"state store {location.shown} has schema version {version}, newer than"
                f" this provisioner's {schema_version()}; upgrade provisioner or pass"
                " another --state"
            )
        if version == schema_version():
            _check_tables(conn, location)
            return
        exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (s,)).fetchone()
        if not exists:
            conn.execute(f"CREATE SCHEMA {s}")
        for step in MIGRATIONS[version:]:
            for statement in step:
                conn.execute(statement.format(s=s))
        conn.execute(
            f"INSERT INTO {s}.meta (name, value) VALUES ('application', %s), ('version', %s)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (APPLICATION, str(schema_version())),
        )


#: Each table's columns at schema_version(): a store lacking one was damaged by hand.
_EXPECTED = {
    "meta": ("name", "value"),
    "runs": (
        "seq", "run_id", "manifest", "pid", "started_at", "finished_at", "exit_code", "counts",
        "summary", "deferred_header", "settings", "pruned_at",
    ),
    "created": ("workspace", "campaign_id", "key", "send_id", "run_seq", "created_at"),
    "intents": ("workspace", "campaign_id", "key", "state", "run_seq", "at", "send_id", "line"),
    "outcomes": (
        "run_seq", "workspace", "key", "status", "created_seq", "created_text", "columns",
        "columns_bin", "line", "campaign_id", "send_id", "attempts", "http_status",
        "latency_ms", "error", "message", "retryable", "field", "duplicate_of", "reason",
        "created_at",
    ),
    "quota_windows": ("workspace", "reset_at", "quota_limit", "remaining", "spent"),
    "leases": ("workspace", "holder", "host", "pid", "started", "epoch", "expires_at"),
}  # fmt: skip


def _check_tables(conn: Any, location: Location) -> None:
    """Refuse a store whose tables or columns are not all there (one query per open):
    otherwise the first read or write would fail mid-run on a missing relation."""
    found: dict[str, set[str]] = {}
    for table, column in conn.execute(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = %s",
        (location.schema,),
    ):
        found.setdefault(table, set()).add(column)
    missing = [
        f"table {table}" if table not in found else f"column {table}.{column}"
        for table, columns in _EXPECTED.items()
        for column in (columns if table in found else columns[:1])
        if table not in found or column not in found[table]
    ]
    if missing:
        raise StateError(
            f"state store {location.shown}: schema {location.schema!r} is damaged (missing"
            f" {', '.join(missing[:5])}); restore it from a backup (or `provisioner state"
            " copy` one in), or pass ?schema=NAME of another schema"
        )


# -- the writer's statements, keyed by the SQLite statement batch.py queues

_OUTCOME_COLS = (
    "run_seq, workspace, key, status, created_seq, created_text, columns, columns_bin, line,"
    " campaign_id, send_id, attempts, http_status, latency_ms, error, message, retryable,"
    " field, duplicate_of, reason, created_at"
)
_REPLACE_OUTCOME = " ON CONFLICT (run_seq, line) DO UPDATE SET " + ", ".join(
    f"{c.strip()} = excluded.{c.strip()}" for c in _OUTCOME_COLS.split(",")[2:]
)
_INTENT = (
    "INSERT INTO {s}.intents (workspace, campaign_id, key, state, run_seq, at, send_id, line)"
    " VALUES (%s, %s, %s, '{state}', %s, %s, %s, %s) ON CONFLICT (workspace, campaign_id, key)"
    " DO UPDATE SET "
)
_PG = {
    schema.SQL_BEGIN_RUN: "INSERT INTO {s}.runs (run_id, manifest, pid, started_at,"
    " deferred_header, settings) VALUES (%s, %s, %s, %s, %s, %s)",
    schema.SQL_FINISH_RUN: "UPDATE {s}.runs SET finished_at = %s, exit_code = %s, counts = %s,"
    " summary = %s WHERE seq = %s",
    schema.SQL_OUTCOME: f"INSERT INTO {{s}}.outcomes ({_OUTCOME_COLS}) VALUES"
    f" ({', '.join(['%s'] * 21)}){_REPLACE_OUTCOME}",
    schema.SQL_SKIPPED: f"INSERT INTO {{s}}.outcomes ({_OUTCOME_COLS}) VALUES (%s, %s, %s,"
    " 'skipped', %s, %s, %s, %s, %s, %s, %s, 0, NULL, NULL, NULL, NULL, 0, NULL, NULL, NULL,"
    f" %s){_REPLACE_OUTCOME}",
    schema.SQL_CREATED: "INSERT INTO {s}.created (workspace, campaign_id, key, send_id,"
    " run_seq, created_at) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (workspace,"
    " campaign_id, key) DO UPDATE SET send_id = excluded.send_id, run_seq = excluded.run_seq,"
    " created_at = excluded.created_at",
    schema.SQL_INTENT: _INTENT.replace("{state}", "in_flight")
    + "state = 'in_flight', run_seq = excluded.run_seq, at = excluded.at,"
    " send_id = excluded.send_id, line = excluded.line",
    schema.SQL_DOUBT: _INTENT.replace("{state}", "in_doubt") + "state = 'in_doubt'",
    schema.SQL_SETTLE: "DELETE FROM {s}.intents WHERE workspace = %s AND campaign_id = %s"
    " AND key = %s",
    schema.SQL_SETTLE_OWN: "DELETE FROM {s}.intents WHERE workspace = %s AND campaign_id = %s"
    " AND key = %s AND run_seq = %s",
    schema.SQL_QUOTA: "INSERT INTO {s}.quota_windows (workspace, reset_at, quota_limit,"
    " remaining, spent) VALUES (%s, %s, %s, %s, %s) ON CONFLICT (workspace, reset_at) DO"
    " UPDATE SET quota_limit = excluded.quota_limit, remaining ="
    " LEAST({s}.quota_windows.remaining, excluded.remaining),"
    " spent = {s}.quota_windows.spent + excluded.spent",
    schema.SQL_PRUNE_QUOTA: "DELETE FROM {s}.quota_windows WHERE reset_at < %s",
    # NaN sorts above every number in PostgreSQL, so NOT (NaN <= x) holds and it goes too.
    schema.SQL_REPAIR_QUOTA: "DELETE FROM {s}.quota_windows WHERE NOT (reset_at <= %s)",
}


@functools.lru_cache(maxsize=64)
def statement(sqlite_sql: str, s: str) -> str:
    """The PostgreSQL form of a queued SQLite statement, for schema ``s``."""
    return _PG[sqlite_sql].format(s=s)


#: Statements sent as one INSERT of many rows (one round trip and one parse per chunk
#: instead of per row), with the function giving each fixed row's conflict key: an
#: upsert may not touch one row twice, so a chunk with a repeated key goes row by row.
MULTI_ROW: dict[str, Callable[[tuple[Any, ...]], object]] = {
    schema.SQL_OUTCOME: lambda row: (row[0], row[8]),
    schema.SQL_SKIPPED: lambda row: (row[0], row[7]),
    schema.SQL_CREATED: lambda row: row[:3],
    schema.SQL_INTENT: lambda row: row[:3],  # a batch of concurrent intents: one statement
    schema.SQL_DOUBT: lambda row: row[:3],
}
ROWS_PER_INSERT = 500


@functools.lru_cache(maxsize=64)
def multi_row(sqlite_sql: str, s: str, rows: int) -> str:
    """statement() with ``rows`` rows in its VALUES list."""
    sql = statement(sqlite_sql, s)
    head, _, rest = sql.partition(" VALUES (")
    row, _, tail = rest.partition(")")  # a row holds placeholders and literals, no "("
    return f"{head} VALUES {', '.join([f'({row})'] * rows)}{tail}"


def fix_outcome(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """codec.encode_outcome's 19 values as the 21 columns of the PostgreSQL table."""
    created = row[4]
    seq, text = (created, None) if isinstance(created, int) else (None, created)
    cols = row[5]
    cols_text, cols_bin = (None, cols) if isinstance(cols, bytes) else (cols, None)
    return (*row[:4], seq, text, cols_text, cols_bin, *row[6:14], int(row[14]), *row[15:])


def fix_skipped(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """codec.encode_skipped's 9 values as SQL_SKIPPED's 11 PostgreSQL parameters."""
    created, cols = row[3], row[4]
    seq, text = (created, None) if isinstance(created, int) else (None, created)
    cols_text, cols_bin = (None, cols) if isinstance(cols, bytes) else (cols, None)
    return (*row[:3], seq, text, cols_text, cols_bin, *row[5:])


FIXES: dict[str, Callable[[tuple[Any, ...]], tuple[Any, ...]]] = {
    schema.SQL_OUTCOME: fix_outcome,
    schema.SQL_SKIPPED: fix_skipped,
}


def unfix_outcome(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A PostgreSQL outcomes row back in codec.decode_outcome's 19-value shape."""
    created = row[4] if row[4] is not None else row[5]
    cols = row[6] if row[6] is not None else (None if row[7] is None else bytes(row[7]))
    return (*row[:4], created, cols, *row[8:])


_TABLES = re.compile(r"\b(FROM|JOIN|INTO|UPDATE)\s+(runs|created|intents|outcomes|quota_windows)\b")


@functools.lru_cache(maxsize=256)
def translate(sql: str, s: str) -> str:
    """A read statement of schema.StoreReader in PostgreSQL: qualified tables, %s
    placeholders (the reader's statements hold no literal ``?`` or ``%``)."""
    sql = _TABLES.sub(lambda m: f"{m[1]} {s}.{m[2]}", sql)
    return sql.replace("IS NOT ?", "IS DISTINCT FROM ?").replace("?", "%s")
