"""``provisioner state copy``: everything one store holds, into another that holds nothing.

SQLite to PostgreSQL, back, or the same kind: a user on one host moves to shared state
without losing what was created. Both ends are opened as a run opens them (``open_store``
with ``lock=True``), so the source's lock or leases are held while it is read (a live run
there: StateLockedError, exit 75, after ``--lock-wait``) and the target's while it is
loaded, so no run can look rows up in a half-loaded store and send them again.

The rows travel through :class:`~provisioner._state.interface.StoreTables`: the source's
are read in one snapshot (:meth:`snapshot`), the target loads them in one transaction
(:meth:`load`) that first checks, under its lock, that the target holds nothing. A copy
that fails leaves the target as empty as it found it; one that ends has the same runs
(with their seqs), created combinations, intents (in flight and in doubt), outcomes and
quota windows, so ``status``, ``export`` and a new run's skips read the same on both.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from provisioner._state import blocks, codec, schema
from provisioner._state.interface import (
    COLUMNS,
    ORDER,
    TABLES,
    Rows,
    StoreTables,
    describe,
    not_empty,
)
from provisioner._state.opening import is_database_url, open_store
from provisioner._state.store import SqliteStateStore, show_location
from provisioner.errors import StateError, UsageError


@dataclass(frozen=True, slots=True)
class Copied:
    """What a copy moved: rows per table, and the two stores as messages show them."""

    source: str
    target: str
    counts: dict[str, int]

    def text(self) -> str:
        return f"copied state store {self.source} to {self.target}: {describe(self.counts)}"


def copy_store(source: Path | str, target: Path | str, *, lock_wait: float = 0.0) -> Copied:
    """Copy everything the store at ``source`` holds into the empty store at ``target``
    (each a file path or a ``postgresql://`` URL; a missing file target is created).

    Raises UsageError when both name one store, StateError (exit 2) when the source file
    does not exist or the target holds anything, StateLockedError (exit 75) when a run
    holds either after ``lock_wait`` seconds."""
    shown_source, shown_target = show_location(source), show_location(target)
    if _same(source, target):
        raise UsageError(
            f"--from and --to both name state store {shown_target}; pass two different stores"
        )
    if isinstance(source, Path) and not source.is_file():
        raise StateError(
            f"state store {source} does not exist: pass --from PATH of a store that a run has used"
        )
    # The workspaces first, read-only: on PostgreSQL they are what the leases cover.
    with _closing(open_store(source, lock=False)) as reader:
        workspaces = tables_of(reader).workspaces()
    with contextlib.ExitStack() as stack:
        ends = []
        for location in (source, target):
            store = stack.enter_context(
                _closing(open_store(location, workspaces=workspaces, lock_wait=lock_wait))
            )
            tables = tables_of(store)
            stack.callback(tables.close)
            ends.append(tables)
        from_tables, to_tables = ends
        held = to_tables.counts()
        if any(held.values()):  # asked again inside load's transaction, under its lock
            raise not_empty(shown_target, held)
        with from_tables.snapshot() as rows_of:
            counts = to_tables.load(rows_of)
    return Copied(shown_source, shown_target, counts)


def tables_of(store: SqliteStateStore) -> StoreTables:
    """The :class:`StoreTables` of an open store, of either backend."""
    location = getattr(store, "location", None)
    if location is not None:
        # Imported here: psycopg is an optional dependency, loaded only for a URL.
        from provisioner._state.postgres_copy import PostgresTables

        return PostgresTables(store)
    return SqliteTables(Path(store.path))


def _same(source: Path | str, target: Path | str) -> bool:
    if is_database_url(source) or is_database_url(target):
        return show_location(source) == show_location(target)
    return Path(source).resolve() == Path(target).resolve()


@contextlib.contextmanager
def _closing(store: SqliteStateStore) -> Iterator[SqliteStateStore]:
    try:
        yield store
    finally:
        store.close()


class SqliteTables:
    """A SQLite store's tables, on a connection of its own (the store's writer thread
    keeps its own, idle: a copy queues nothing)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = schema.connect(path)

    def counts(self) -> dict[str, int]:
        with self._translated():
            counts = {
                t: self._conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES
            }
            held = self._conn.execute("SELECT coalesce(sum(rows), 0) FROM blocks").fetchone()
        counts["outcomes"] += held[0]  # a block holds a batch of outcomes
        return counts

    def workspaces(self) -> list[str]:
        union = " UNION ".join(
            f"SELECT workspace FROM {t}"
            for t in ("created", "intents", "outcomes", "quota_windows")
        )
        with self._translated():
            rows = self._conn.execute(
                f"SELECT workspace FROM ({union}) WHERE workspace IS NOT NULL ORDER BY 1"
            ).fetchall()
        return [row[0] for row in rows]

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Callable[[str], Rows]]:
        def rows_of(table: str) -> Rows:
            with self._translated():
                cursor = self._conn.execute(
                    f"SELECT {', '.join(COLUMNS[table])} FROM {table} ORDER BY {ORDER[table]}"
                )
                while page := cursor.fetchmany(_PAGE):
                    yield from page
            if table == "outcomes":
                yield from self._block_rows()

        with self._translated():
            self._conn.execute("BEGIN")  # deferred: one WAL snapshot from the first read on
        try:
            yield rows_of
        finally:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    def _block_rows(self) -> Rows:
        """The outcomes held in compact blocks (``blocks.py``: skipped rows as references to
        their creations, deferred rows compressed), as plain outcome rows: the shape every
        store loads (a copy into SQLite keeps them plain, which export reads alike)."""
        run_ids = dict(self._conn.execute("SELECT seq, run_id FROM runs").fetchall())
        seq_of = {run_id: seq for seq, run_id in run_ids.items()}
        cursor = self._conn.execute(
            "SELECT run_seq, kind, data FROM blocks ORDER BY run_seq, first_line, kind"
        )
        while page := cursor.fetchmany(16):
            for seq, kind, data in page:
                decoded = blocks.decode_block(
                    self._conn, seq, kind, data, run_ids.__getitem__, run_ids[seq]
                )
                for outcome in decoded:
                    # A block keeps no workspace or key: nothing reads them for such rows.
                    yield codec.encode_outcome(seq, None, None, outcome, seq_of)  # type: ignore[arg-type]

    def load(self, rows_of: Callable[[str], Rows]) -> dict[str, int]:
        conn = self._conn
        with self._translated():
            conn.execute("BEGIN IMMEDIATE")  # the write lock first: nothing lands in between
            try:
                held = {t: self._count(t) for t in TABLES}
                if any(held.values()):
                    raise not_empty(str(self.path), held)
                counts = {}
                for table in TABLES:
                    columns = COLUMNS[table]
                    sql = (
                        f"INSERT INTO {table} ({', '.join(columns)})"
                        f" VALUES ({', '.join('?' * len(columns))})"
                    )
                    counts[table] = conn.executemany(sql, rows_of(table)).rowcount
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return counts

    def close(self) -> None:
        self._conn.close()

    def _count(self, table: str) -> int:
        return int(self._conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise schema.describe(self.path, exc) from None


_PAGE = 2000
