"""Everything SQL in the state store: DDL and migrations, file recognition, the writer's
statements and :class:`SqliteReader` (the read side). The outcome row codec is in
``codec.py``.

``store.py`` holds the seam and the concurrency. Our files carry ``application_id`` =
:data:`APPLICATION_ID` and ``user_version`` = schema version, both set in the DDL's own
transaction, so a file has both or is untouched.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from provisioner._core.identity import RowKey
from provisioner._core.models import MAX_RESET_AHEAD, Outcome
from provisioner._state import blocks, migrations
from provisioner._state.codec import LINE_INDEX, OUTCOME_COLUMNS, decode_outcome
from provisioner._state.lock import live_holder
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
def lookup_sql(table: str, columns: str, n: int) -> str:
    """SELECT campaign_id, key, <columns> FROM ``table`` for ``n`` keys, then a workspace.

    A VALUES list joined on the primary key does one index search per key: measured
    ~300k keys/s on 1M rows, against ~6k/s for ``(a, b) IN (VALUES ...)``, which scans.
    """
    values = ", ".join(["(?, ?)"] * n)
    return (
        f"SELECT t.campaign_id, t.key, {columns} FROM (VALUES {values}) AS v"
        f" JOIN {table} AS t ON t.workspace = ? AND t.campaign_id = v.column1"
        " AND t.key = v.column2"
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


class SqliteReader:
    """The read side: one connection, serialised by a lock, usable from any thread.

    WAL lets it read while the writer thread commits; it sees committed data only.
    :class:`provisioner._state.store.SqliteStateStore` adds the writer on top of it.
    """

    #: Skipped and deferred rows are stored as blocks (blocks.py); not in PostgreSQL.
    _compact = True

    def __init__(self, path: Path, read: sqlite3.Connection) -> None:
        self.path = path
        self._read = read
        self._read_lock = threading.RLock()
        self._closed = False
        #: The run this store is recording (set by begin_run), None when only reading.
        self._run_id: str | None = None
        self._run_seq: int | None = None
        self._run_ids: dict[int, str] = {}
        self._seqs: dict[str, int] = {}
        # Two variables per key plus the workspace, within this SQLite build's limit.
        limit = read.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        self._chunk = max(1, min(1000, (limit - 1) // 2))

    def lookup_many(self, workspace: str, keys: Sequence[RowKey]) -> dict[RowKey, Prior]:
        """What earlier runs left for ``keys``: created, in_doubt, or in_flight (an intent
        of a run other than this store's current one). Unknown keys are absent."""
        found: dict[RowKey, Prior] = {}
        if not keys:
            return found
        with self._reading() as conn:
            intents = conn.execute("SELECT EXISTS (SELECT 1 FROM intents)").fetchone()[0]
            for start in range(0, len(keys), self._chunk):
                chunk = keys[start : start + self._chunk]
                params: list[object] = list(itertools.chain.from_iterable(chunk))
                params.append(workspace)
                sql = lookup_sql("created", "send_id, run_seq, created_at", len(chunk))
                run_ids: dict[int, str] = {}  # a run's id once per batch, not once per row
                for campaign_id, key, send_id, seq, at in conn.execute(sql, params):
                    run_id = run_ids.get(seq)
                    if run_id is None:
                        run_id = run_ids[seq] = self._run_id_of(seq)
                    found[campaign_id, key] = Prior("created", run_id, at, send_id)
                if not intents:  # the usual case: skip the second search
                    continue
                sql = lookup_sql("intents", "state, run_seq, at, send_id", len(chunk))
                for campaign_id, key, state, seq, at, send_id in conn.execute(sql, params):
                    if (campaign_id, key) in found or (state != IN_DOUBT and seq == self._run_seq):
                        continue
                    found[campaign_id, key] = Prior(state, self._run_id_of(seq), at, send_id)
        return found

    def quota_window(self, workspace: str, now: float) -> QuotaWindow | None:
        """The window with reset_at > now, or None. Should the server's reset time have
        jittered into several rows, they merge conservatively (lowest remaining, summed
        spent, latest reset)."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT reset_at, quota_limit, remaining, spent FROM quota_windows"
                " WHERE workspace = ? AND reset_at > ? AND reset_at <= ? ORDER BY reset_at",
                (workspace, now, now + MAX_RESET_AHEAD),
            ).fetchall()
        if not rows:
            return None
        reset_at, limit = rows[-1][0], rows[-1][1]
        remaining = min(row[2] for row in rows)
        return QuotaWindow(workspace, reset_at, limit, remaining, sum(row[3] for row in rows))

    def iter_outcomes(self, run_id: str) -> Iterator[Outcome]:
        """Every outcome of ``run_id`` in line order (StateError at once if it is unknown):
        the plain rows merged with the blocks' (``blocks.py``)."""
        seq = self._seq_of(run_id)
        sql = (
            f"SELECT {OUTCOME_COLUMNS} FROM outcomes WHERE run_seq = ? AND line > ?"
            f" ORDER BY line LIMIT {_PAGE}"
        )

        def pages() -> Iterator[Outcome]:
            last = -(2**63)
            while True:  # page by page, so no read snapshot is held while the caller writes
                with self._reading() as conn:
                    rows = conn.execute(sql, (seq, last)).fetchall()
                    page = [decode_outcome(row, self._run_id_of) for row in rows]
                yield from page
                if len(rows) < _PAGE:
                    return
                last = rows[-1][LINE_INDEX]

        return blocks.merge(pages(), self._blocks(seq, run_id))

    def _blocks(self, seq: int, run_id: str) -> Iterator[list[Outcome]]:
        """The run's blocks decoded, in order of their first line, a few at a time."""
        sql = (
            "SELECT first_line, kind, data FROM blocks WHERE run_seq = ?"
            " AND (first_line, kind) > (?, ?) ORDER BY first_line, kind LIMIT 16"
        )
        after: tuple[int, str] = (-(2**63), "")
        while True:
            with self._reading() as conn:
                rows = conn.execute(sql, (seq, *after)).fetchall()
                decoded = [
                    blocks.decode_block(conn, seq, kind, data, self._run_id_of, run_id)
                    for _, kind, data in rows
                ]
            yield from decoded
            if len(rows) < 16:
                return
            after = (rows[-1][0], rows[-1][1])

    def run_info(self, run_id: str) -> tuple[RunRecord, tuple[str, ...] | None, dict[str, object]]:
        """A run's record, its deferred.csv header, and its stored summary."""
        with self._reading() as conn:
            row = conn.execute(
                f"SELECT {_RUN_COLUMNS}, deferred_header, summary FROM runs WHERE run_id = ?",
                (run_id,),
            ).fetchone()
        if row is None:
            raise self._unknown_run(run_id)
        header = None if row[8] is None else tuple(orjson.loads(row[8]))
        return _run_record(row), header, orjson.loads(row[9])

    def workspaces(self) -> list[str]:
        """Every workspace label the store has recorded a quota window for."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT DISTINCT workspace FROM quota_windows ORDER BY 1"
            ).fetchall()
        return [row[0] for row in rows]

    def recent_runs(self, limit: int = 10) -> list[RunRecord]:
        """The latest ``limit`` runs, newest first."""
        with self._reading() as conn:
            rows = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs ORDER BY seq DESC LIMIT ?", (limit,)
            ).fetchall()
        return [_run_record(row) for row in rows]

    def open_problems(self) -> dict[str, int]:
        """Rows needing attention: intents in doubt, intents of runs that died in flight
        (not the live run's), and deferred rows of the latest run."""
        with self._reading() as conn:
            live = self._live_run_seq(conn)
            in_doubt, stale = conn.execute(
                "SELECT count(*) FILTER (WHERE state = 'in_doubt'),"
                " count(*) FILTER (WHERE state = 'in_flight' AND run_seq IS NOT ?) FROM intents",
                (live,),
            ).fetchone()
            deferred = conn.execute(
                "SELECT count(*) FROM outcomes WHERE status = 'deferred'"
                " AND run_seq = (SELECT max(seq) FROM runs)"
            ).fetchone()[0]
            if self._compact:
                deferred += conn.execute(
                    "SELECT coalesce(sum(rows), 0) FROM blocks WHERE kind = 'deferred'"
                    " AND run_seq = (SELECT max(seq) FROM runs)"
                ).fetchone()[0]
        return {"in_doubt": in_doubt, "in_flight_stale": stale, "deferred_last_run": deferred}

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        if self._closed:
            raise RuntimeError("the state store is closed")
        with self._read_lock:
            try:
                yield self._read
            except sqlite3.Error as exc:
                raise describe(self.path, exc) from None

    def _seq_of(self, run_id: str) -> int:
        if run_id not in self._seqs:
            self._load_runs()
            if run_id not in self._seqs:
                raise self._unknown_run(run_id)
        return self._seqs[run_id]

    def _run_id_of(self, seq: int) -> str:
        if seq not in self._run_ids:
            self._load_runs()
        return self._run_ids.get(seq, f"#{seq}")  # "#n": a run row deleted by hand

    def _load_runs(self) -> None:
        # A few hundred bytes a run, one run a night: caching them all stays small.
        with self._reading() as conn:
            rows = conn.execute("SELECT seq, run_id FROM runs").fetchall()
        self._run_ids = dict(rows)
        self._seqs = {run_id: seq for seq, run_id in rows}

    def _live_run_seq(self, conn: sqlite3.Connection) -> int | None:
        if self._run_seq is not None:
            return self._run_seq
        pid = live_holder(self.path)  # read-only (status): the lock names the live run
        row = conn.execute(
            "SELECT max(seq) FROM runs WHERE pid = ? AND finished_at IS NULL", (pid,)
        ).fetchone()
        return None if pid is None else row[0]

    def _unknown_run(self, run_id: str) -> StateError:
        return StateError(
            f"no run {run_id!r} in state store {self.path}; `provisioner status` lists recent runs"
        )


_PAGE = 2000  # outcomes per read in iter_outcomes
_RUN_COLUMNS = "run_id, manifest, started_at, finished_at, exit_code, counts, pid, pruned_at"


def _run_record(row: Sequence[Any]) -> RunRecord:
    run_id, manifest, started_at, finished_at, exit_code, counts, pid, pruned_at = row[:8]
    return RunRecord(
        run_id, manifest, started_at, finished_at, exit_code, orjson.loads(counts), pid, pruned_at
    )
