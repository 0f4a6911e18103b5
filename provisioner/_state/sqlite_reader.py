"""The SQLite store's read side: :class:`SqliteReader`, what ``status``, ``export`` and
``validate`` read (a store opened without its lock is only this), and what a run looks up;
``store.SqliteStateStore`` adds the writer to it. The SQL it runs is ``schema.py``'s."""

from __future__ import annotations

import contextlib
import functools
import itertools
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from provisioner._core.identity import RowKey
from provisioner._core.models import MAX_RESET_AHEAD, Outcome
from provisioner._state import blocks
from provisioner._state.codec import LINE_INDEX, OUTCOME_COLUMNS, decode_outcome
from provisioner._state.lock import live_holder
from provisioner._state.schema import (
    IN_DOUBT,
    Prior,
    QuotaWindow,
    RunRecord,
    describe,
    lookup_sql,
)
from provisioner.errors import StateError


@functools.lru_cache(maxsize=4)
def _created_sql(n: int) -> str:
    """The created rows of ``n`` keys with their creation's outcome row, if any (a skip of
    a row equal to it is then kept as a reference to it, ``blocks.py``).

    The outcome is found here, in the search the skip needs anyway, rather than by a
    second search of created and outcomes in the writer, which cost a skip run about a
    quarter of its time (measured, BENCHMARKS.md)."""
    return lookup_sql(
        "created",
        "t.send_id, t.run_seq, t.created_at, o.line, o.send_id, o.created_at, o.columns",
        n,
        join=" LEFT JOIN outcomes AS o ON o.run_seq = t.run_seq AND o.line = t.line"
        " AND o.status = 'created' AND o.campaign_id = t.campaign_id",
    )


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
                run_ids: dict[int, str] = {}  # a run's id once per batch, not once per row
                rows = conn.execute(_created_sql(len(chunk)), params)
                for campaign_id, key, send_id, seq, at, line, *shown in rows:
                    run_id = run_ids.get(seq)
                    if run_id is None:
                        run_id = run_ids[seq] = self._run_id_of(seq)
                    ref = None if line is None else (seq, line, *shown)
                    found[campaign_id, key] = Prior("created", run_id, at, send_id, ref)
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
