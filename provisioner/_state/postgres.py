"""The PostgreSQL state store: the same :class:`~provisioner._state.store.StateStore`
as the SQLite file, for hosts that share one database (Kubernetes, Airflow, failover).

It reuses :class:`SqliteStateStore`'s queue, writer thread, group commit and fail-stop
unchanged; only the connections, the reads' SQL dialect and the commit differ
(``postgres_schema.py`` holds the SQL). psycopg 3, sync connections, autocommit with
explicit transactions, ``prepare_threshold=None`` (no server-side prepared statements:
they break behind PgBouncer's transaction pooling).

Durability: every commit waits for the server's WAL flush (``synchronous_commit`` on)
when it holds an intent that must be durable; other batches commit with
``synchronous_commit = off`` (the server has the data; a server crash may lose the last
fraction of a second of records, never an intent), as the SQLite store's
``synchronous=NORMAL``.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator, Sequence
from operator import itemgetter
from typing import Any

from provisioner._core.identity import RowKey
from provisioner._core.models import MAX_RESET_AHEAD, Outcome
from provisioner._state import postgres_bulk as bulk
from provisioner._state import postgres_schema as pg
from provisioner._state import postgres_text, retention, schema
from provisioner._state.batch import CREATED, OUTCOMES, Op, settle, sort_batch
from provisioner._state.codec import decode_outcome
from provisioner._state.lock import wait_for_lock
from provisioner._state.postgres_lease import Lease, LeaseLostError
from provisioner._state.postgres_retention import PgTarget, schema_bytes
from provisioner._state.retention import Policy, Pruned
from provisioner._state.schema import IN_DOUBT, Prior
from provisioner._state.store import SqliteStateStore
from provisioner.errors import StateError

_PAGE = 2000
#: Keys per lookup statement: the runner asks 512 at a time; validate may ask more.
_LOOKUP_CHUNK = 4096
#: Rows from which a table's inserts go as COPY: the savepoint around it costs two round
#: trips, which a handful of rows would not repay.
_COPY_AT = 16
#: The statements each COPY-able table may hold; anything else takes the upsert path.
_COPIED = {
    OUTCOMES: frozenset({schema.SQL_OUTCOME, schema.SQL_SKIPPED}),
    CREATED: frozenset({schema.SQL_CREATED}),
}
#: The writer's per-transaction settings (see _commit); a batch without an intent does
#: not wait for the WAL flush (a server crash may lose it, never an intent).
_DURABLE = (
    "SELECT set_config('idle_in_transaction_session_timeout', %s, true),"
    " set_config('statement_timeout', %s, true)"
)
_LAZY = _DURABLE + ", set_config('synchronous_commit', 'off', true)"
_SETTLES = frozenset({schema.SQL_SETTLE, schema.SQL_SETTLE_OWN})
_UNIQUE_VIOLATION = "23505"
_OUTCOME_SELECT = (
    "SELECT run_seq, workspace, key, status, created_seq, created_text, columns, columns_bin,"
    " line, campaign_id, send_id, attempts, http_status, latency_ms, error, message,"
    " retryable, field, duplicate_of, reason, created_at FROM {s}.outcomes"
    " WHERE run_seq = %s AND line > %s ORDER BY line LIMIT " + str(_PAGE)
)


def connect(location: pg.Location, doing: str = "connecting") -> Any:
    """A psycopg connection (autocommit, no prepared statements); StateError if it fails."""
    try:
        import psycopg
    except ImportError:
        raise StateError(
            f"state store {location.shown}: PostgreSQL support is not installed;"
            " pip install 'provisioner[postgresql]'"
        ) from None
    extra: dict[str, Any] = {}
    if location.password is not None:
        extra["password"] = location.password
    try:
        conn = psycopg.connect(
            location.conninfo,
            autocommit=True,
            prepare_threshold=None,
            application_name="provisioner",
            connect_timeout=10,
            **extra,
        )
    except Exception as exc:  # psycopg.Error, or a bad conninfo (ProgrammingError)
        raise pg.describe(location, exc, doing) from None
    postgres_text.install(conn)  # NUL in any text: stored escaped, read back as it was
    return conn


class _Dialect:
    """The read connection as StoreReader expects it: ``execute(sql, params)`` in the
    SQLite dialect, translated for PostgreSQL."""

    def __init__(self, conn: Any, s: str) -> None:
        self._conn = conn
        self._s = s

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._conn.execute(pg.translate(sql, self._s), params)


class PostgresStateStore(SqliteStateStore):
    """The PostgreSQL :class:`StateStore`; create it with :func:`open_postgres`."""

    _compact = False  # skipped and deferred rows stay plain outcomes rows here

    def __init__(
        self,
        location: pg.Location,
        read: Any,
        write: Any | None,
        lease: Lease | None = None,
        *,
        durable_intents: bool = True,
    ) -> None:
        self.location = location
        self._schema = location.schema
        # StoreReader.__init__ asks SQLite for its variable limit: set its fields here.
        self.path = location.shown  # type: ignore[assignment]
        self._read = read
        self._dialect = _Dialect(read, location.schema)
        self._pg_write = write
        self._lease = lease
        self._lease_ms = 1000 * location.lease_s
        self._init_writer(write is not None, durable_intents)
        if lease is not None:
            self.took_over_from = lease.took_over_from
            lease.start_heartbeat(self._lease_lost)

    def _lease_lost(self, why: str) -> None:
        """From the heartbeat or a fenced commit: fail-stop, so nothing more is sent."""
        if self._error is None:
            self._error = (
                f"state store {self.location.shown}: {why}; this run stopped sending and"
                " recorded nothing more, since another run may own these rows now:"
                " `provisioner status` shows the runs"
            )

    def _check_writable(self) -> None:
        """SqliteStateStore's check, and first the lease's (:meth:`_check_lease`)."""
        self._check_lease()
        super()._check_writable()

    def _check_lease(self) -> None:
        """Fail-stop, without asking the database, once the lease may have lapsed (its
        heartbeat late, or the process frozen past its expiry): nothing more is sent."""
        lease = self._lease
        if lease is not None and self._error is None and not lease.live():
            self._lease_lost(lease.lapsed())
        if self._error is not None:
            self._error_seen = True
            raise StateError(self._error)

    async def intent(
        self,
        run_id: str,
        workspace: str,
        key: RowKey,
        send_id: str | None,
        line: int,
        *,
        wait: bool = True,
    ) -> None:
        """SqliteStateStore.intent; after the commit it waited for, the lease is checked
        again: the process may have been frozen while it waited."""
        await super().intent(run_id, workspace, key, send_id, line, wait=wait)
        if wait:
            self._check_lease()

    async def throttle(self) -> None:
        """SqliteStateStore.throttle, raising first once the store has stopped (the lease
        lapsed): the runner calls it before a retry, which records nothing else."""
        self._check_lease()
        await super().throttle()

    def _init_writer(self, writable: bool, durable_intents: bool) -> None:
        import threading
        from collections import deque

        self._read_lock = threading.RLock()
        self._closed = False
        self._run_id = None
        self._run_seq = None
        self._run_ids = {}
        self._seqs = {}
        self._chunk = 1000
        self.took_over_from = None
        self._write = None
        self._run_lock = None
        self._durable_intents = durable_intents
        self._full_sync = False
        self._ops = deque()
        self._bytes, self._checkpoints, self._checkpointed = 0, deque(), 0  # as SqliteStateStore
        self._wake = threading.Event()
        self._error = None
        self._error_seen = False
        self._writer = None
        if writable:
            self._writer = threading.Thread(
                target=self._writer_main, name="provisioner-state-writer", daemon=True
            )
            self._writer.start()

    # -- reads

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Any]:
        if self._closed:
            raise RuntimeError("the state store is closed")
        with self._read_lock:
            try:
                yield self._dialect
            except StateError:
                raise
            except Exception as exc:
                if _is_psycopg_error(exc):
                    raise pg.describe(self.location, exc, "a read") from None
                raise

    def lookup_many(self, workspace: str, keys: Sequence[RowKey]) -> dict[RowKey, Prior]:
        """SqliteReader.lookup_many's answer, one statement (one round trip) per 4,096
        keys (postgres_bulk.lookup)."""
        found: dict[RowKey, Prior] = {}
        if not keys:
            return found
        with self._reading():
            for start in range(0, len(keys), _LOOKUP_CHUNK):
                chunk = keys[start : start + _LOOKUP_CHUNK]
                run_ids: dict[int, str] = {}  # a run's id once per batch, not once per row
                intents = []
                for i, state, send_id, seq, at in bulk.lookup(
                    self._read, self._schema, workspace, chunk
                ):
                    if state is not None:
                        intents.append((chunk[i - 1], state, send_id, seq, at))
                        continue
                    run_id = run_ids.get(seq)
                    if run_id is None:
                        run_id = run_ids[seq] = self._run_id_of(seq)
                    found[chunk[i - 1]] = Prior("created", run_id, at, send_id)
                for key, state, send_id, seq, at in intents:
                    if key in found or (state != IN_DOUBT and seq == self._run_seq):
                        continue
                    found[key] = Prior(state, self._run_id_of(seq), at, send_id)
        return found

    def iter_outcomes(self, run_id: str) -> Iterator[Outcome]:
        """Every outcome of ``run_id`` in line order (StateError at once if it is unknown)."""
        seq = self._seq_of(run_id)
        sql = _OUTCOME_SELECT.format(s=self._schema)

        def pages() -> Iterator[Outcome]:
            last = -(2**63)
            while True:
                with self._reading():
                    try:
                        rows = self._read.execute(sql, (seq, last)).fetchall()
                    except Exception as exc:
                        raise pg.describe(self.location, exc, "a read") from None
                    page = [decode_outcome(pg.unfix_outcome(r), self._run_id_of) for r in rows]
                yield from page
                if len(rows) < _PAGE:
                    return
                last = rows[-1][8]

        return pages()

    def _live_run_seq(self, conn: Any) -> int | None:
        if self._run_seq is not None:
            return self._run_seq
        return None  # without a lease table nothing names a live run from outside

    # -- retention

    def prune(self, policy: Policy, *, dry_run: bool = False, **options: Any) -> Pruned:
        """As the SQLite store's; runs of other hosts may be under way meanwhile (each
        touches only its own run's rows). This ends the store's writing."""
        if self._writer is not None:
            from provisioner._state.batch import STOP

            self._push((STOP, "", None))
            self._writer.join()
            self._writer = None
        self._check_failed()
        holder = None if self._lease is None else self._lease.holder
        with self._read_lock:  # the read connection: autocommit, and idle once a run ends
            target = PgTarget(self._read, self._schema, holder)
            try:
                return retention.prune(
                    target, policy, own_seq=self._run_seq, dry_run=dry_run, **options
                )
            except StateError:
                raise
            except Exception as exc:
                if _is_psycopg_error(exc):
                    raise pg.describe(self.location, exc, "pruning") from None
                raise

    def size_bytes(self) -> int:
        """The schema's tables with their indexes and TOAST, as the server counts them."""
        with self._reading():
            return schema_bytes(self._read, self._schema)

    # -- the writer thread

    def _apply(self, batch: list[Op]) -> bool:
        sorted_ = sort_batch(batch)
        if self._error is None and any(sorted_.tables):
            durable = sorted_.durable and self._durable_intents
            try:
                self._commit(sorted_.tables, durable)
            except LeaseLostError:
                pass  # _lease_lost set the error
            except Exception as exc:  # surfaced to every waiter and every later call
                if self._lease is not None and not self._lease.live():
                    # Frozen mid-transaction: the server ended it (its idle timeout), and
                    # the lapsed lease, not the closed connection, is the news.
                    self._lease_lost(self._lease.lapsed())
                detail = pg.scrub(str(exc), self.location.secrets) or type(exc).__name__
                self._error = self._error or (
                    f"state store {self.location.shown}: a write failed ({detail}); the run"
                    " stopped so that nothing is sent unrecorded: check the database, then"
                    " run again"
                )
        settle(sorted_.waiters, self._error)
        return sorted_.stop

    def _commit(self, tables: list[list[Op]], durable: bool) -> None:
        conn = self._pg_write
        assert conn is not None  # the writer thread exists only with a write connection
        with conn.transaction(), conn.cursor() as cur:
            # A writer frozen mid-transaction (SIGSTOP, a VM freeze) would hold the lease
            # rows' share lock (the fence's) for as long as it stays frozen, and the run
            # taking over would wait on it for ever: the server ends such a transaction
            # after the lease's length. Both settings last this transaction only.
            limit = f"{int(self._lease_ms)}ms"
            cur.execute(_DURABLE if durable else _LAZY, (limit, limit))
            if self._lease is not None:
                self._lease.fence(cur)  # before any write: a fenced holder changes nothing
            for kind, ops in enumerate(tables):
                if len(ops) >= _COPY_AT and kind in _COPIED and self._copy(conn, cur, kind, ops):
                    continue
                self._statements(cur, ops)

    def _copy(self, conn: Any, cur: Any, kind: int, ops: list[Op]) -> bool:
        """The outcomes (or created) rows of a batch as one COPY, in a savepoint. False,
        with nothing written, when a row is already stored or twice in the batch (a
        replaced outcome, a --force re-creation): the upserts then apply them in order."""
        known = _COPIED[kind]
        if not all(op[1] in known for op in ops):
            return False
        try:
            with conn.transaction():
                if kind == OUTCOMES:
                    rows = (
                        bulk.skipped_row(pg.fix_skipped(p))
                        if sql == schema.SQL_SKIPPED
                        else pg.fix_outcome(p)
                        for _, sql, p in ops
                    )
                    bulk.copy_outcomes(cur, self._schema, rows)
                else:
                    bulk.copy_created(cur, self._schema, (op[2] for op in ops))
        except Exception as exc:
            if getattr(exc, "sqlstate", None) == _UNIQUE_VIOLATION:
                return False
            raise
        return True

    def _statements(self, cur: Any, ops: list[Op]) -> None:
        """A table's operations in queue order: runs of one statement go as one statement
        of many rows where they can, else one by one.

        Never executemany: psycopg sends it as a pipeline, after which the server does
        not arm idle_in_transaction_session_timeout (measured, PostgreSQL 18), so a
        writer frozen right after one would hold its locks for ever."""
        for sql, group in itertools.groupby(ops, itemgetter(1)):
            params = [op[2] for op in group]
            if len(params) > 1 and sql in _SETTLES:
                bulk.settle(cur, self._schema, params, own=sql == schema.SQL_SETTLE_OWN)
                continue
            fix = pg.FIXES.get(sql)
            if fix is not None:
                params = [fix(p) for p in params]
            key = pg.MULTI_ROW.get(sql)
            if key is None or len(params) < 2 or len({key(p) for p in params}) < len(params):
                statement = pg.statement(sql, self._schema)
                for p in params:  # rare: most batches are a few rows of quota or runs
                    cur.execute(statement, p)
                continue
            for start in range(0, len(params), pg.ROWS_PER_INSERT):
                chunk = params[start : start + pg.ROWS_PER_INSERT]
                cur.execute(
                    pg.multi_row(sql, self._schema, len(chunk)),
                    list(itertools.chain.from_iterable(chunk)),
                )

    def close(self) -> None:
        """Commit what is queued, stop the writer, close the connections."""
        if self._closed:
            return
        try:
            if self._writer is not None:
                from provisioner._state.batch import STOP

                self._push((STOP, "", None))
                self._closed = True
                self._writer.join()
        finally:
            self._closed = True
            if self._lease is not None:
                self._lease.release()
            lease_conn = None if self._lease is None else self._lease.conn
            for conn in (self._read, self._pg_write, lease_conn):
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
        if self._error is not None and not self._error_seen:
            self._error_seen = True
            raise StateError(self._error)


def _is_psycopg_error(exc: BaseException) -> bool:
    return type(exc).__module__.startswith("psycopg")


def open_postgres(
    url: str,
    *,
    lock: bool = True,
    durable_intents: bool = True,
    workspaces: Sequence[str] = (),
    lock_wait: float = 0.0,
) -> PostgresStateStore:
    """Open (creating or upgrading its schema) the store in the database ``url`` names.

    ``lock=True`` (runs) opens a write connection and starts the writer thread;
    ``lock=False`` (status, export, validate) reads only. A writing store holds the
    lease of each of ``workspaces`` (postgres_lease.py) until :meth:`close`, waiting up
    to ``lock_wait`` seconds for a lease another run holds.
    """
    location = pg.parse_location(url)
    conns: list[Any] = []
    try:
        conns.append(connect(location))
        try:
            pg.prepare(conns[0], location)
        except StateError:
            raise
        except Exception as exc:
            raise pg.describe(location, exc, "preparing the schema") from None
        lease = None
        if lock:
            conns.append(connect(location))
            conns.append(connect(location))
            try:
                lease = wait_for_lock(
                    lambda: Lease.acquire(
                        conns[2], location.schema, workspaces, location.shown, location.lease_s
                    ),
                    lock_wait,
                    location.shown,
                    0.5,  # a try is a transaction on the database: not too often
                )
            except StateError:
                raise
            except Exception as exc:
                raise pg.describe(location, exc, "taking the run's lease") from None
            try:
                # As the SQLite store does under its run lock: a window no server meant
                # (an older version stored it) would otherwise stay the workspace's.
                conns[1].execute(
                    pg.statement(schema.SQL_REPAIR_QUOTA, location.schema),
                    (time.time() + MAX_RESET_AHEAD,),
                )
            except Exception as exc:
                raise pg.describe(location, exc, "repairing the quota windows") from None
        read = conns[0]
        write = conns[1] if lock else None
        return PostgresStateStore(location, read, write, lease, durable_intents=durable_intents)
    except BaseException:
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()
        raise
