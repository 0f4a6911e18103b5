"""Everything SQL in the state store: DDL and migrations, file recognition, the writer's
statements and :class:`SqliteReader` (the read side). The outcome row codec is in
``codec.py``.

``store.py`` holds the seam and the concurrency. Our files carry ``application_id`` =
:data:`APPLICATION_ID` and ``user_version`` = schema version, both set in the DDL's own
transaction, so a file has both or is untouched.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from provisioner._core.models import MAX_RESET_AHEAD, CreationRef
from provisioner._state import migrations
from provisioner._state.codec import OUTCOME_COLUMNS
from provisioner.errors import StateError

#: "PRVS" in ASCII; any other non-zero value means another application's file.
APPLICATION_ID = 0x50525653

_V1 = (
    # seq is the compact handle the big tables store instead of the run_id text.
    """CREATE TABLE runs (
        seq INTEGER PRIMARY KEY, run_id TEXT NOT NULL UNIQUE, manifest TEXT NOT NULL,
        pid INTEGER NOT NULL, started_at REAL NOT NULL, finished_at REAL, exit_code INTEGER,
        counts TEXT NOT NULL DEFAULT '{}', summary TEXT NOT NULL DEFAULT '{}',
        deferred_header TEXT, settings TEXT NOT NULL DEFAULT '{}')""",
    """CREATE TABLE created (
        workspace TEXT NOT NULL, campaign_id TEXT NOT NULL, key TEXT NOT NULL,
        send_id TEXT NOT NULL, run_seq INTEGER NOT NULL, created_at REAL NOT NULL,
        PRIMARY KEY (workspace, campaign_id, key)) WITHOUT ROWID""",
    # Small by construction: a row lives only while its request's fate is unknown.
    """CREATE TABLE intents (
        workspace TEXT NOT NULL, campaign_id TEXT NOT NULL, key TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('in_flight', 'in_doubt')),
        run_seq INTEGER NOT NULL, at REAL NOT NULL, send_id TEXT, line INTEGER NOT NULL,
        PRIMARY KEY (workspace, campaign_id, key)) WITHOUT ROWID""",
    # The codec's own columns come first, then the plain Outcome fields (_PLAIN order).
    # created_run has no declared type on purpose: it holds the creating run's seq (an
    # integer: compact) or, for a run_id this store does not know, the text. columns is
    # orjson TEXT, a BLOB from the stdlib fallback (integers over 64 bits), or NULL: ().
    """CREATE TABLE outcomes (
        run_seq INTEGER NOT NULL, workspace TEXT, key TEXT, status TEXT NOT NULL,
        created_run, columns, line INTEGER NOT NULL, campaign_id TEXT, send_id TEXT,
        attempts INTEGER NOT NULL, http_status INTEGER, latency_ms REAL, error TEXT,
        message TEXT, retryable INTEGER NOT NULL, field TEXT, duplicate_of INTEGER,
        reason TEXT, created_at REAL,
        PRIMARY KEY (run_seq, line)) WITHOUT ROWID""",
    # Partial: only deferred rows are indexed, so `status` counts them without a scan.
    "CREATE INDEX outcomes_deferred ON outcomes (run_seq) WHERE status = 'deferred'",
    """CREATE TABLE quota_windows (
        workspace TEXT NOT NULL, reset_at REAL NOT NULL, quota_limit INTEGER NOT NULL,
        remaining INTEGER NOT NULL, spent INTEGER NOT NULL,
        PRIMARY KEY (workspace, reset_at)) WITHOUT ROWID""",
)


def _v1(conn: sqlite3.Connection) -> None:
    # One statement at a time: executescript() would COMMIT the migration's transaction.
    for statement in _V1:
        conn.execute(statement)


#: MIGRATIONS[i] upgrades a file from schema version i to i + 1 (0 is an empty file).
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _v1,
    migrations.v2_pruned_at,
    migrations.v3_blocks,
]


def schema_version() -> int:
    """The schema version this code writes: the number of migration steps."""
    return len(MIGRATIONS)


def connect(path: Path) -> sqlite3.Connection:
    """Open ``path`` in autocommit mode (transactions are explicit), usable from any thread.

    Callers serialise use themselves; SQLite waits up to 5 s for a lock before failing.
    """
    try:
        return sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise StateError(
            f"cannot open state store {path}: {exc}; check the path and its permissions,"
            " or pass --state PATH"
        ) from None


def prepare(conn: sqlite3.Connection, path: Path) -> None:
    """Check that ``conn`` is our file (or empty), switch it to WAL and bring it up to date.

    Raises StateError naming the path, the problem and the fix for a corrupt file, a
    foreign database, a newer schema or an unwritable location.
    """
    try:
        version = _check_identity(conn, path)
        if version == 0:
            # Only a file without pages takes it (switching later needs a full VACUUM):
            # pruned pages are then given back to the disk in small steps (retention.py).
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StateError(
                f"state store {path} cannot use write-ahead logging (journal mode {mode});"
                " put it on a local filesystem with --state PATH"
            )
        if version < schema_version():
            _migrate(conn, path)
    except StateError:
        raise
    except sqlite3.DatabaseError as exc:
        raise describe(path, exc) from None


def repair_quota_windows(conn: sqlite3.Connection, now: float) -> int:
    """Drop stored windows whose reset no server meant (NaN, or further than
    ``MAX_RESET_AHEAD`` from ``now``: an absurd ``X-RateLimit-Reset`` an older version
    stored). Left in place, such a window would be the workspace's for ever. Returns how
    many rows went."""
    with conn:
        cursor = conn.execute(SQL_REPAIR_QUOTA, (now + MAX_RESET_AHEAD,))
    return cursor.rowcount


def describe(path: Path, exc: sqlite3.Error) -> StateError:
    """Translate a sqlite3 error about ``path`` into a one-line StateError with a fix."""
    text = str(exc)
    lowered = text.lower()
    if "not a database" in lowered or "malformed" in lowered:
        return StateError(
            f"state store {path} is corrupt or not a SQLite database ({text});"
            " move it aside or pass --state PATH"
        )
    if "readonly" in lowered or "unable to open" in lowered or "permission" in lowered:
        return StateError(
            f"state store {path} cannot be written ({text});"
            " fix its permissions or pass --state PATH"
        )
    return StateError(f"state store {path} failed ({text}); check the disk, or pass --state PATH")


def _check_identity(conn: sqlite3.Connection, path: Path) -> int:
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    objects = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    if app_id != APPLICATION_ID and (app_id != 0 or objects or version):
        raise StateError(
            f"state store {path} is another application's SQLite database"
            f" (application_id {app_id:#x}, {objects} schema objects);"
            " move it aside or pass --state PATH"
        )
    if version > schema_version():
        raise StateError(
            f"state store {path} has schema version {version}, newer than this provisioner's"
            f" {schema_version()}; upgrade provisioner or pass --state PATH"
        )
    return version


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    # IMMEDIATE takes the write lock first, so a concurrent opener (status with lock=False)
    # cannot migrate the same file twice; versions are re-read under that lock.
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = _check_identity(conn, path)
        for step in MIGRATIONS[version:]:
            step(conn)
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {schema_version()}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


# -- statements (the writer thread executes these; tables are independent of each other) --

SQL_BEGIN_RUN = (
    "INSERT INTO runs (run_id, manifest, pid, started_at, deferred_header, settings)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
SQL_FINISH_RUN = (
    "UPDATE runs SET finished_at = ?, exit_code = ?, counts = ?, summary = ? WHERE seq = ?"
)
SQL_OUTCOME = f"INSERT OR REPLACE INTO outcomes ({OUTCOME_COLUMNS}) VALUES ({', '.join('?' * 19)})"
# A skipped row's outcome (encode_skipped): the fields every skipped row has alike are
# literals. The writer binds each parameter holding the GIL, which the loop's thread then
# waits for: 9 parameters a row rather than 19.
SQL_SKIPPED = (
    f"INSERT OR REPLACE INTO outcomes ({OUTCOME_COLUMNS}) VALUES (?, ?, ?, 'skipped', ?, ?, ?,"
    " ?, ?, 0, NULL, NULL, NULL, NULL, 0, NULL, NULL, NULL, ?)"
)
# A combination created again (--force) points at its latest creation.
SQL_CREATED = (
    "INSERT INTO created (workspace, campaign_id, key, send_id, run_seq, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (workspace, campaign_id, key) DO UPDATE SET"
    " send_id = excluded.send_id, run_seq = excluded.run_seq, created_at = excluded.created_at"
)
# The same with the creation's line (SQLite: skipped rows refer to it, blocks.py).
SQL_CREATED_LINE = (
    "INSERT INTO created (workspace, campaign_id, key, send_id, run_seq, created_at, line)"
    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (workspace, campaign_id, key) DO UPDATE SET"
    " send_id = excluded.send_id, run_seq = excluded.run_seq,"
    " created_at = excluded.created_at, line = excluded.line"
)
_INTENT_INSERT = (
    "INSERT INTO intents (workspace, campaign_id, key, state, run_seq, at, send_id, line)"
    " VALUES (?, ?, ?, '{}', ?, ?, ?, ?) ON CONFLICT (workspace, campaign_id, key) DO UPDATE SET"
)
SQL_INTENT = _INTENT_INSERT.format("in_flight") + (
    " state = 'in_flight', run_seq = excluded.run_seq, at = excluded.at,"
    " send_id = excluded.send_id, line = excluded.line"
)
# An in-doubt verdict keeps the original intent's run, time and requested send_id.
SQL_DOUBT = _INTENT_INSERT.format("in_doubt") + " state = 'in_doubt'"
SQL_SETTLE = "DELETE FROM intents WHERE workspace = ? AND campaign_id = ? AND key = ?"
SQL_SETTLE_OWN = SQL_SETTLE + " AND run_seq = ?"
SQL_QUOTA = (
    "INSERT INTO quota_windows (workspace, reset_at, quota_limit, remaining, spent)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (workspace, reset_at) DO UPDATE SET"
    " quota_limit = excluded.quota_limit, remaining = min(remaining, excluded.remaining),"
    " spent = spent + excluded.spent"
)
SQL_PRUNE_QUOTA = "DELETE FROM quota_windows WHERE reset_at < ?"
# NOT (x <= ?) rather than x > ?: a value that compares as nothing (text an older version
# let in) goes too.
SQL_REPAIR_QUOTA = "DELETE FROM quota_windows WHERE NOT (reset_at <= ?)"


@functools.lru_cache(maxsize=32)
def lookup_sql(table: str, columns: str, n: int, join: str = "") -> str:
    """SELECT campaign_id, key, <columns> FROM ``table`` (as ``t``) for ``n`` keys, then a
    workspace; ``join`` adds a join after it.

    A VALUES list joined on the primary key does one index search per key: measured
    ~300k keys/s on 1M rows, against ~6k/s for ``(a, b) IN (VALUES ...)``, which scans.
    """
    values = ", ".join(["(?, ?)"] * n)
    return (
        f"SELECT t.campaign_id, t.key, {columns} FROM (VALUES {values}) AS v"
        f" JOIN {table} AS t ON t.workspace = ? AND t.campaign_id = v.column1"
        f" AND t.key = v.column2{join}"
    )


#: The Outcome.error code of a request whose fate is unknown; such intents are kept.
IN_DOUBT = "in_doubt"


@dataclass(frozen=True, slots=True)
class Prior:
    """What the store knows about a row identity from earlier runs."""

    kind: Literal["created", "in_flight", "in_doubt"]
    run_id: str
    #: created_at for "created"; the intent's time otherwise (epoch seconds).
    at: float
    #: The created send_id, or the one requested by the intent (None: Braze picks).
    send_id: str | None
    #: SQLite, "created": the creation's outcome row, when it shows this creation (its
    #: send_id and time); a skip of an equal row is stored as this reference.
    ref: CreationRef | None = None


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run, as `provisioner status` lists it."""

    run_id: str
    manifest: str
    started_at: float
    finished_at: float | None
    exit_code: int | None
    counts: dict[str, int]
    pid: int
    #: When retention removed the run's outcomes (epoch seconds); None: they are kept.
    pruned_at: float | None = None


@dataclass(frozen=True, slots=True)
class QuotaWindow:
    """The current quota window of a workspace, as far as this store has seen it."""

    workspace: str
    reset_at: float
    limit: int
    #: The lowest X-RateLimit-Remaining the server reported in this window.
    remaining: int
    #: Creations by this tool in this window (summed over runs).
    spent: int
