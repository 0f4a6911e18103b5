"""A PostgreSQL store's tables for ``provisioner state copy`` (``copy.py``): read in one
REPEATABLE READ snapshot through server-side cursors, loaded with ``COPY`` in one
transaction that first takes the tables' locks, checks the lease (fencing, as every
commit of a run does) and that the schema holds nothing.

Rows travel in the SQLite tables' shape (``interface.COLUMNS``); the outcomes table's two
split columns are joined and split again with ``postgres_schema``'s own functions, the
ones the writer and the reader use.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from typing import Any

from provisioner._state import postgres_schema as pg
from provisioner._state.interface import COLUMNS, ORDER, TABLES, Rows, not_empty
from provisioner._state.postgres import PostgresStateStore, connect
from provisioner._state.postgres_lease import LeaseLostError
from provisioner.errors import StateError

_PAGE = 2000
#: The columns a table has here, where they differ from COLUMNS (outcomes: 21, not 19).
_PG_COLUMNS = {"outcomes": tuple(c.strip() for c in pg._OUTCOME_COLS.split(","))}


class PostgresTables:
    """The tables of an open :class:`PostgresStateStore`, on a connection of its own."""

    def __init__(self, store: Any) -> None:
        assert isinstance(store, PostgresStateStore)
        self._location = store.location
        self._s = store.location.schema
        self._lease = store._lease  # None when the store was opened read-only
        self._conn = connect(self._location, "copying")

    def counts(self) -> dict[str, int]:
        with self._translated("counting rows"):
            return self._counts(self._conn)

    def workspaces(self) -> list[str]:
        tables = ("leases", "created", "intents", "outcomes", "quota_windows")
        union = " UNION ".join(f"SELECT workspace FROM {self._s}.{t}" for t in tables)
        with self._translated("listing workspaces"):
            rows = self._conn.execute(
                f"SELECT workspace FROM ({union}) AS w WHERE workspace IS NOT NULL ORDER BY 1"
            ).fetchall()
        return [row[0] for row in rows]

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Callable[[str], Rows]]:
        names = itertools.count()

        def rows_of(table: str) -> Rows:
            columns = ", ".join(_PG_COLUMNS.get(table, COLUMNS[table]))
            sql = f"SELECT {columns} FROM {self._s}.{table} ORDER BY {ORDER[table]}"
            with self._translated("reading"), self._conn.cursor(f"copy_{next(names)}") as cur:
                cur.itersize = _PAGE
                cur.execute(sql)
                for row in cur:
                    yield pg.unfix_outcome(row) if table == "outcomes" else tuple(row)

        with self._translated("reading"), self._conn.transaction():
            # One snapshot for every table (and named cursors need a transaction).
            self._conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield rows_of

    def load(self, rows_of: Callable[[str], Rows]) -> dict[str, int]:
        s = self._s
        counts: dict[str, int] = {}
        with self._translated("loading"), self._conn.transaction(), self._conn.cursor() as cur:
            if self._lease is not None:
                self._lease.fence(cur)
            # EXCLUSIVE: others may read, nobody writes until the copy commits.
            cur.execute(f"LOCK TABLE {', '.join(f'{s}.{t}' for t in TABLES)} IN EXCLUSIVE MODE")
            held = self._counts(cur)
            if any(held.values()):
                raise not_empty(self._location.shown, held)
            for table in TABLES:
                columns = ", ".join(_PG_COLUMNS.get(table, COLUMNS[table]))
                fix = pg.fix_outcome if table == "outcomes" else None
                n = 0
                with cur.copy(f"COPY {s}.{table} ({columns}) FROM STDIN") as copy:
                    for row in rows_of(table):
                        copy.write_row(fix(row) if fix else row)
                        n += 1
                counts[table] = n
            # Runs were loaded with their seqs: the next run's seq must follow them.
            cur.execute(
                f"SELECT setval(pg_get_serial_sequence('{s}.runs', 'seq'),"
                f" coalesce(max(seq), 1), max(seq) IS NOT NULL) FROM {s}.runs"
            )
        return counts

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()

    def _counts(self, conn: Any) -> dict[str, int]:
        selects = ", ".join(f"(SELECT count(*) FROM {self._s}.{t})" for t in TABLES)
        row = conn.execute(f"SELECT {selects}").fetchone()
        return dict(zip(TABLES, (int(n) for n in row), strict=True))

    @contextlib.contextmanager
    def _translated(self, doing: str) -> Iterator[None]:
        try:
            yield
        except LeaseLostError as exc:
            raise StateError(
                f"state store {self._location.shown}: {exc}; nothing was copied, run the copy again"
            ) from None
        except Exception as exc:
            if type(exc).__module__.startswith("psycopg"):
                raise pg.describe(self._location, exc, doing) from None
            raise
