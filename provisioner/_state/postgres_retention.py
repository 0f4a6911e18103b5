"""Retention on the PostgreSQL store: the target ``retention.prune`` runs its SQL on, and
the size of the tool's schema that ``status`` and ``prune`` report."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, cast

from provisioner._state import postgres_schema as pg
from provisioner._state import retention


def schema_bytes(conn: Any, s: str) -> int:
    row = conn.execute(
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s"
        " AND c.relkind = 'r'",
        (s,),
    ).fetchone()
    return int(row[0])


class PgTarget:
    """retention.Target on PostgreSQL: the SQLite-dialect SQL translated, one
    transaction per step. Space is left to autovacuum (dead rows' space is reused)."""

    per_run = retention.PER_RUN  # every outcome is kept whole here: nothing refers to one

    def __init__(self, conn: Any, s: str, own_holder: str | None) -> None:
        self._conn = conn
        self._s = s
        self._own_holder = own_holder

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._conn.execute(pg.translate(sql, self._s), params)

    def transaction(self) -> contextlib.AbstractContextManager[Any]:
        return cast(contextlib.AbstractContextManager[Any], self._conn.transaction())

    def size(self) -> int:
        return schema_bytes(self._conn, self._s)

    def others_may_be_live(self) -> bool:
        # Leases do not name runs: while any other lease is live, an unfinished run may
        # be that holder's, so unfinished runs wait for a quiet moment.
        row = self._conn.execute(
            f"SELECT count(*) FROM {self._s}.leases WHERE holder IS NOT NULL"
            " AND holder IS DISTINCT FROM %s AND expires_at > extract(epoch FROM"
            " clock_timestamp())",
            (self._own_holder,),
        ).fetchone()
        return bool(row[0])

    def reclaim(self, switch: bool) -> str | None:
        if switch:
            return "PostgreSQL's autovacuum reuses the space: there is nothing to switch"
        return None
