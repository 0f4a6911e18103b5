"""Set-based statements of the PostgreSQL store: a batch of keys looked up in one
statement, and the writer's big inserts and deletes as one statement (or one COPY) per
batch instead of one per row.

Measured on loopback (2 vCPU, shared): a multi-row ``INSERT ... VALUES`` of 500 skipped
rows cost ~54 µs of client CPU a row (psycopg parses every long statement again in
Python); a binary COPY of the same rows ~4 µs. A lookup as ``(VALUES (%s, %s), ...)``
cost ~14 µs a key, the same keys as two joined strings split by the server ~3 µs.

Nothing here is a server-side prepared statement (PgBouncer's transaction pooling), and
nothing outlives its transaction (no temporary table, no session setting).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

#: Splits the joined keys on the server. Campaign ids and keys never hold a control
#: character (manifest rules), but a caller's keys may: they go as arrays instead.
SEP = "\x1f"


def pack(values: Sequence[str]) -> tuple[str | list[str], bool]:
    """``values`` as one text the server splits on :data:`SEP` (True), or as a list
    (False) when a value holds the separator or the text would be empty (one empty
    value: ``string_to_array('')`` is an empty array, not one empty string)."""
    joined = SEP.join(values)
    if joined and joined.count(SEP) == len(values) - 1:
        return joined, True
    return list(values), False


def _array(param: str, joined: bool) -> str:
    return f"string_to_array(%({param})s, E'\\x1f')" if joined else f"%({param})s::text[]"


@functools.lru_cache(maxsize=16)
def lookup_sql(s: str, joined_c: bool, joined_k: bool) -> str:
    """Everything ``created`` and ``intents`` hold for a batch of keys, in one statement.

    Each key is one index search (a LATERAL subquery with LIMIT 1 is never turned into
    a join): on 2,048 keys and 100k created rows the planner chose a hash join over the
    whole table (~90 ms a batch) for the plain join. ``v.i`` is the key's position, so
    no key text comes back; the intents search runs only when the table holds a row.
    """
    keys = (
        f"WITH v AS MATERIALIZED (SELECT * FROM unnest({_array('c', joined_c)},"
        f" {_array('k', joined_k)}) WITH ORDINALITY AS v(c, k, i))"
    )
    where = "workspace = %(w)s AND campaign_id = v.c AND key = v.k LIMIT 1"
    return (
        f"{keys} SELECT v.i, NULL::text, t.send_id, t.run_seq, t.created_at FROM v"
        f" CROSS JOIN LATERAL (SELECT send_id, run_seq, created_at FROM {s}.created"
        f" WHERE {where}) AS t"
        " UNION ALL SELECT v.i, t.state, t.send_id, t.run_seq, t.at FROM v"
        f" CROSS JOIN LATERAL (SELECT state, send_id, run_seq, at FROM {s}.intents"
        f" WHERE {where}) AS t WHERE EXISTS (SELECT 1 FROM {s}.intents)"
    )


def lookup(conn: Any, s: str, workspace: str, keys: Sequence[tuple[str, str]]) -> list[Any]:
    """Rows ``(position (1-based), state or None for created, send_id, run_seq, at)``
    for those of ``keys`` (non-empty) that ``created`` or ``intents`` hold."""
    campaigns, names = zip(*keys, strict=True)
    c, joined_c = pack(campaigns)
    k, joined_k = pack(names)
    sql = lookup_sql(s, joined_c, joined_k)
    return list(conn.execute(sql, {"c": c, "k": k, "w": workspace}).fetchall())


# -- the writer: COPY for the big inserts, one DELETE per batch of settles

#: The outcomes table's 21 columns (postgres_schema._V1) with their binary COPY types.
OUTCOME_TYPES = (
    "int8", "text", "text", "text", "int8", "text", "text", "bytea", "int8", "text", "text",
    "int4", "int4", "float8", "text", "text", "int4", "text", "int8", "text", "float8",
)  # fmt: skip
CREATED_TYPES = ("text", "text", "text", "text", "int8", "float8")
_OUTCOME_COLS = (
    "run_seq, workspace, key, status, created_seq, created_text, columns, columns_bin, line,"
    " campaign_id, send_id, attempts, http_status, latency_ms, error, message, retryable,"
    " field, duplicate_of, reason, created_at"
)
_CREATED_COLS = "workspace, campaign_id, key, send_id, run_seq, created_at"


def skipped_row(p: tuple[Any, ...]) -> tuple[Any, ...]:
    """postgres_schema.fix_skipped's 11 parameters as the outcomes table's 21 columns
    (what SQL_SKIPPED's literals say)."""
    return (*p[:3], "skipped", *p[3:10], 0, None, None, None, None, 0, None, None, None, p[10])


def copy_outcomes(cur: Any, s: str, rows: Iterable[tuple[Any, ...]]) -> None:
    """Binary COPY of full outcomes rows (21 values each)."""
    _copy(
        cur, f"COPY {s}.outcomes ({_OUTCOME_COLS}) FROM STDIN (FORMAT BINARY)", OUTCOME_TYPES, rows
    )


def copy_created(cur: Any, s: str, rows: Iterable[tuple[Any, ...]]) -> None:
    """Binary COPY of created rows (SQL_CREATED's 6 parameters each)."""
    _copy(
        cur, f"COPY {s}.created ({_CREATED_COLS}) FROM STDIN (FORMAT BINARY)", CREATED_TYPES, rows
    )


def _copy(cur: Any, sql: str, types: Sequence[str], rows: Iterable[tuple[Any, ...]]) -> None:
    with cur.copy(sql) as copy:
        copy.set_types(list(types))
        write = copy.write_row
        for row in rows:
            write(row)


@functools.lru_cache(maxsize=16)
def settle_sql(s: str, joined: tuple[bool, bool, bool], own: bool) -> str:
    """Delete the intents of a batch of (workspace, campaign_id, key) in one statement;
    ``own``: only those of the run each one names (SQL_SETTLE_OWN)."""
    run = ", %(r)s::bigint[]" if own else ""
    return (
        f"DELETE FROM {s}.intents AS i USING unnest({_array('w', joined[0])},"
        f" {_array('c', joined[1])}, {_array('k', joined[2])}{run}) AS v(w, c, k"
        f"{', r' if own else ''}) WHERE i.workspace = v.w AND i.campaign_id = v.c"
        f" AND i.key = v.k{' AND i.run_seq = v.r' if own else ''}"
    )


def settle(cur: Any, s: str, params: Sequence[tuple[Any, ...]], own: bool) -> None:
    """SQL_SETTLE (or SQL_SETTLE_OWN) for every parameter tuple, as one DELETE: deletes
    commute, so the order within the batch does not matter."""
    columns = list(zip(*params, strict=True))
    values: dict[str, Any] = {}
    joined = []
    for name, column in zip("wck", columns[:3], strict=True):
        values[name], flag = pack(column)
        joined.append(flag)
    if own:
        values["r"] = list(columns[3])
    cur.execute(settle_sql(s, (joined[0], joined[1], joined[2]), own), values)
