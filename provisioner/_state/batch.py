"""How the state store's writer thread turns queued operations into transactions.

``store.SqliteStateStore`` queues operations from the event loop; its writer thread takes
up to a batch at a time, sorts them by table (``sort_batch``), drops the work that cancels
out (``coalesce_intents``), commits them in one transaction (``commit``) and settles the
futures that waited for it (``settle``), on the loops they belong to.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import itertools
import sqlite3
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from provisioner._state import blocks, schema
from provisioner.errors import StateError

# Operation kinds. Kinds below WAIT name the table a statement writes: the tables have
# no triggers or foreign keys between them, so within one transaction the writer applies
# each table's statements together (in queue order) to batch them with executemany.
# A GROUP holds one record's statements, so they always share a transaction.
RUNS, CREATED, INTENTS, OUTCOMES, QUOTA, WAIT, STOP, GROUP = range(8)
#: (kind, sql, params) for a statement; (WAIT, "", future), (STOP, "", None) and
#: (GROUP, "", statements).
Op = tuple[int, str, Any]
Waiter = asyncio.Future[None] | concurrent.futures.Future[None]


@dataclass(slots=True)
class Batch:
    """One batch of operations, sorted: each table's statements in queue order."""

    tables: list[list[Op]] = field(default_factory=lambda: [[], [], [], [], []])
    waiters: list[Waiter] = field(default_factory=list)
    stop: bool = False
    #: A durable intent is in it: the commit must be fsynced (synchronous=FULL).
    durable: bool = False


def sort_batch(batch: list[Op]) -> Batch:
    """Sort ``batch`` by table, waiters and stop; intents that cancel out are dropped."""
    out = Batch()
    tables = out.tables
    for op in batch:
        kind = op[0]
        if kind < WAIT:
            tables[kind].append(op)
            out.durable = out.durable or op[1] is schema.SQL_INTENT
        elif kind == GROUP:
            for statement in op[2]:
                tables[statement[0]].append(statement)
        elif kind == WAIT:
            out.waiters.append(op[2])
        else:
            out.stop = True
    tables[INTENTS] = coalesce_intents(tables[INTENTS])
    return out


#: Inserts written as one statement of many rows rather than executemany (see commit).
_MULTI_ROW = frozenset(
    {schema.SQL_OUTCOME, schema.SQL_CREATED, schema.SQL_CREATED_LINE, schema.SQL_SKIPPED}
)
_ROWS_PER_INSERT = 256


@functools.lru_cache(maxsize=8)
def _multi_row(sql: str, rows: int) -> str:
    """``sql`` (one ``VALUES (...)`` row, maybe an upsert clause) with ``rows`` rows."""
    head, _, rest = sql.partition(" VALUES (")
    row, _, tail = rest.partition(")")
    return f"{head} VALUES {', '.join([f'({row})'] * rows)}{tail}"


def commit(conn: sqlite3.Connection, tables: list[list[Op]], *, compact_rows: bool = False) -> None:
    """Apply the sorted statements in one transaction; ``compact_rows``: deferred
    outcomes go as blocks (:func:`compact`).

    The big inserts (outcomes, created) go as statements of up to 256 rows: executemany
    runs one step per row, and each step releases the GIL, so with the event loop's thread
    busy every row cost a thread switch on both sides; one step per 256 rows does not.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        if compact_rows and tables[OUTCOMES]:
            tables[OUTCOMES] = compact(tables[OUTCOMES])
        for ops in tables:
            for sql, group in itertools.groupby(ops, itemgetter(1)):
                params = [op[2] for op in group]
                if sql not in _MULTI_ROW:
                    conn.executemany(sql, params)
                    continue
                # Full chunks only: every row count is a statement of its own in the
                # connection's statement cache (~100 KB each compiled), so the rest goes
                # row by row rather than as one more size (+20 MB of peak RSS measured).
                full = len(params) - len(params) % _ROWS_PER_INSERT
                for start in range(0, full, _ROWS_PER_INSERT):
                    chunk = params[start : start + _ROWS_PER_INSERT]
                    conn.execute(
                        _multi_row(sql, _ROWS_PER_INSERT),
                        list(itertools.chain.from_iterable(chunk)),
                    )
                conn.executemany(sql, params[full:])
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def compact(ops: list[Op]) -> list[Op]:
    """``ops`` (one batch's outcomes statements) with deferred rows replaced by block
    inserts (``blocks.py``); the other rows stay as they are. (Skipped rows come as blocks
    already, from ``record_skipped``.) Runs in the writer, so the loop's thread queues the
    same records as ever."""
    deferred: list[tuple[Any, ...]] = []
    kept: list[Op] = []
    for op in ops:
        sql, row = op[1], op[2]
        # Stdlib-encoded columns (huge integers, bytes) stay plain.
        if sql is schema.SQL_OUTCOME and row[3] == blocks.DEFERRED and type(row[5]) is not bytes:
            deferred.append(row)
        else:
            kept.append(op)
    if not deferred:
        return ops
    kept.extend((OUTCOMES, blocks.SQL_BLOCK, p) for p in blocks.deferred_blocks(deferred))
    return kept


def settle(waiters: list[Waiter], error: str | None) -> None:
    """Resolve each waiter (a StateError when the commit failed), on its own loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for waiter in waiters:
        if isinstance(waiter, concurrent.futures.Future):
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(StateError(error))
        else:
            by_loop.setdefault(waiter.get_loop(), []).append(waiter)
    for loop, futures in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
            loop.call_soon_threadsafe(_settle_futures, futures, error)


def _settle_futures(futures: list[asyncio.Future[None]], error: str | None) -> None:
    for future in futures:
        if not future.done():  # a cancelled waiter (SIGINT) is simply gone
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(StateError(error))


def coalesce_intents(ops: list[Op]) -> list[Op]:
    """Drop each intent whose settle follows it in the same transaction.

    An intent queued without waiting (a row with a send_id) usually shares its commit with
    the outcome that settles it; inserting then deleting the same row is wasted work, and
    the alternation split one executemany into one call per statement. The delete stays
    (it also clears an older run's intent), so the committed result is the same.
    """
    settled: set[tuple[object, ...]] = set()
    kept: list[Op] = []
    for op in reversed(ops):
        sql, params = op[1], op[2]
        if sql is schema.SQL_SETTLE or sql is schema.SQL_SETTLE_OWN:
            settled.add(params[:3])
        elif sql is schema.SQL_INTENT and params[:3] in settled:
            continue
        else:  # an in-doubt verdict needs its intent's row: keep both
            settled.discard(params[:3])
        kept.append(op)
    if len(kept) == len(ops):
        return ops
    kept.reverse()
    return kept
