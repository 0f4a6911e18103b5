"""Retention: old runs' per-run records are pruned, what the guarantees need is kept.

The policy (``[state] keep_days``, ``keep_runs``): a run is pruned only when it is older
than ``keep_days`` (by its end, else its start) AND not among the last ``keep_runs``
runs. ``keep_days = 0`` turns retention off (nothing is ever pruned): the safe reading
of a zero, since misreading it keeps data rather than deleting it.

What goes: a pruned run's rows in the per-run tables (:data:`PER_RUN`: its outcomes,
deferred rows' values included; on SQLite, :data:`SQLITE_PER_RUN`, its blocks and its
outcomes except its creations', which later runs' skipped rows refer to) and the
details of its ``runs`` row (settings, summary, deferred header). What stays, always: the
``runs`` row itself (id, manifest, times, exit
code, counts and ``pruned_at``: ``status`` lists it, ``export`` explains it, and its
``seq`` names the creator of ``created`` rows), every ``created`` combination (the skip
depends on them), every intent (the in-doubt guarantee depends on them), the quota
windows, and any run that may be live: the store's own run, and an unfinished run unless
the backend can tell it is dead (SQLite: the pruner holds the run lock; PostgreSQL: no
other run holds a live lease).

Kill -9 safety: a run is first marked pruned (one transaction), then its rows are deleted
in bounded steps, one transaction each; a run marked but not emptied (a prune that was
killed) is finished by the next prune. Nothing that is kept is ever in a transaction
that deletes. Space: SQLite gives freed pages back with ``PRAGMA incremental_vacuum``
in steps (stores created before auto_vacuum = INCREMENTAL reuse them instead, until
``provisioner prune --vacuum`` switches them once); PostgreSQL's autovacuum reuses dead
rows' space.

The SQL is written once, in the SQLite dialect; a :class:`Target` runs it (the
PostgreSQL one translates it, ``postgres.py``).
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from provisioner.errors import StateError

DAY_S = 86400.0
#: Tables holding one run's records, with the column that orders a run's rows (each
#: step deletes the next ``step_rows`` of them). A new per-run table is added here.
#: (table, ordering column, the rows it keeps, how many manifest rows a set of its rows
#: holds). SQLite keeps a pruned run's creations' outcomes, since later runs' skipped
#: rows are compact references to them (blocks.py; ~150 bytes a created row, kept as
#: long as its combination), and drops its blocks (each holds a batch of rows).
PerRun = tuple[tuple[str, str, str, str], ...]
PER_RUN: PerRun = (("outcomes", "line", "", "count(*)"),)
SQLITE_PER_RUN: PerRun = (
    ("outcomes", "line", " AND status <> 'created'", "count(*)"),
    ("blocks", "first_line", "", "coalesce(sum(rows), 0)"),
)
STEP_ROWS = 20_000  # rows deleted per transaction: bounds a step's lock time and WAL
VACUUM_PAGES = 2048  # pages given back per incremental_vacuum transaction (8 MiB at 4 KiB)


@dataclass(frozen=True, slots=True)
class Policy:
    """Keep runs younger than ``keep_days`` and the last ``keep_runs``; 0 days: keep all."""

    keep_days: float = 30.0
    keep_runs: int = 10

    @property
    def enabled(self) -> bool:
        return self.keep_days > 0

    def describe(self) -> str:
        """The policy in one phrase, for ``status`` and ``prune``."""
        if not self.enabled:
            return "off (keep_days = 0): nothing is pruned"
        return (
            f"runs older than {self.keep_days:g} days beyond the last {self.keep_runs} are"
            " pruned at the end of each run"
        )

    def to_dict(self) -> dict[str, object]:
        return {"keep_days": self.keep_days, "keep_runs": self.keep_runs, "enabled": self.enabled}


@dataclass(frozen=True, slots=True)
class Pruned:
    """What one prune removed (or, with ``dry_run``, would remove)."""

    runs: tuple[str, ...]
    rows: int
    bytes_before: int
    bytes_after: int
    dry_run: bool
    #: A remark for the person (a store that cannot shrink its file), or None.
    note: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "runs": list(self.runs),
            "rows": self.rows,
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "dry_run": self.dry_run,
            "note": self.note,
        }


class Target(Protocol):
    per_run: PerRun  # the per-run tables of this backend, what each keeps
    """A store's write connection as the pruner uses it; no one else writes meanwhile."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any: ...
    def transaction(self) -> contextlib.AbstractContextManager[None]: ...
    def size(self) -> int: ...
    def others_may_be_live(self) -> bool: ...
    def reclaim(self, switch: bool) -> str | None: ...


#: Called after each step with (run_id, rows deleted so far in this prune).
Progress = Callable[[str, int], None]


def prune(
    target: Target,
    policy: Policy,
    *,
    now: float | None = None,
    own_seq: int | None = None,
    dry_run: bool = False,
    vacuum: bool = False,
    step_rows: int = STEP_ROWS,
    progress: Progress | None = None,
) -> Pruned:
    """Prune what ``policy`` lets go (and finish any prune that was interrupted), then
    give the space back; ``vacuum`` first switches an older SQLite store to incremental
    vacuum (a full VACUUM, once). ``own_seq``: the run recording now, never pruned."""
    now = time.time() if now is None else now
    before = target.size()
    chosen = _chosen(target, policy, now, own_seq)
    rows = 0
    if dry_run:
        for seq, _run_id, _marked in chosen:
            for table, _order, keep, counted in target.per_run:
                count = target.execute(
                    f"SELECT {counted} FROM {table} WHERE run_seq = ?{keep}", (seq,)
                )
                rows += int(count.fetchone()[0])
        return Pruned(tuple(r for _, r, _ in chosen), rows, before, before, True)
    for seq, run_id, marked in chosen:
        if not marked:
            with target.transaction():
                target.execute(
                    "UPDATE runs SET pruned_at = ?, settings = '{}', summary = '{}',"
                    " deferred_header = NULL WHERE seq = ? AND pruned_at IS NULL",
                    (now, seq),
                )
        for what in target.per_run:
            rows += _delete_in_steps(target, what, seq, step_rows, run_id, rows, progress)
    note = target.reclaim(vacuum) if chosen or vacuum else None
    return Pruned(tuple(r for _, r, _ in chosen), rows, before, target.size(), False, note)


def _chosen(
    target: Target, policy: Policy, now: float, own_seq: int | None
) -> list[tuple[int, str, bool]]:
    """(seq, run_id, already marked) of the runs to prune, oldest first."""
    runs = target.execute(
        "SELECT seq, run_id, started_at, finished_at, pruned_at FROM runs ORDER BY seq DESC"
    ).fetchall()
    others_live: bool | None = None
    chosen: list[tuple[int, str, bool]] = []
    for rank, (seq, run_id, started_at, finished_at, pruned_at) in enumerate(runs):
        if pruned_at is not None:
            if _has_rows(target, seq):  # a prune was killed half-way: finish it
                chosen.append((seq, run_id, True))
            continue
        if not policy.enabled or rank < policy.keep_runs or seq == own_seq:
            continue
        ended = finished_at if finished_at is not None else started_at
        if ended > now - policy.keep_days * DAY_S:
            continue
        if finished_at is None:
            if others_live is None:
                others_live = target.others_may_be_live()
            if others_live:
                continue  # it may be a run still under way on another host
        chosen.append((seq, run_id, False))
    chosen.reverse()
    return chosen


def _has_rows(target: Target, seq: int) -> bool:
    for table, _order, keep, _counted in target.per_run:
        found = target.execute(f"SELECT 1 FROM {table} WHERE run_seq = ?{keep} LIMIT 1", (seq,))
        if found.fetchone():
            return True
    return False


def _delete_in_steps(
    target: Target,
    what: tuple[str, str, str, str],
    seq: int,
    step_rows: int,
    run_id: str,
    done: int,
    progress: Progress | None,
) -> int:
    table, order, keep, counted = what
    deleted = 0
    while True:
        with target.transaction():
            bound = target.execute(
                f"SELECT {order} FROM {table} WHERE run_seq = ?{keep}"
                f" ORDER BY {order} LIMIT 1 OFFSET ?",
                (seq, step_rows - 1),
            ).fetchone()
            where = f"WHERE run_seq = ?{keep}" + ("" if bound is None else f" AND {order} <= ?")
            params = (seq,) if bound is None else (seq, bound[0])
            # Manifest rows, not table rows: a block holds a batch of them.
            found = target.execute(f"SELECT {counted} FROM {table} {where}", params).fetchone()
            deleted += int(found[0])
            target.execute(f"DELETE FROM {table} {where}", params)
        if progress is not None:
            progress(run_id, done + deleted)
        if bound is None:
            return deleted


# -- SQLite


def file_bytes(path: Path) -> int:
    """The store's bytes on disk: the database file and its write-ahead log."""
    total = 0
    for name in (path, path.with_name(path.name + "-wal")):
        with contextlib.suppress(OSError):
            total += name.stat().st_size
    return total


class SqliteTarget:
    """The SQLite store's write connection, used while the run lock is held."""

    per_run = SQLITE_PER_RUN

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self._path = path

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(sql, params)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def size(self) -> int:
        return file_bytes(self._path)

    def others_may_be_live(self) -> bool:
        return False  # the pruner holds the run lock: an unfinished run is a dead one

    def reclaim(self, switch: bool) -> str | None:
        """Give freed pages back in bounded steps, then shrink the write-ahead log."""
        conn = self.conn
        if switch:
            switch_to_incremental(conn, self._path)
        if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:  # 2: INCREMENTAL
            return (
                f"state store {self._path} predates incremental vacuum: its file keeps its"
                " size and later runs reuse the freed space; `provisioner prune --vacuum`"
                f" switches it once (needs about {_mb(vacuum_needs(conn))} free)"
            )
        while conn.execute("PRAGMA freelist_count").fetchone()[0]:
            # executescript steps the pragma to its end; execute() frees a single page.
            conn.executescript(f"PRAGMA incremental_vacuum({VACUUM_PAGES});")
        with contextlib.suppress(sqlite3.Error):  # a reader may hold it: shrinks next time
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        return None


def vacuum_needs(conn: sqlite3.Connection) -> int:
    """Bytes a full VACUUM may need free: a copy of the used pages in the temporary folder
    and as much again in the write-ahead log beside the store."""
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    used = conn.execute("PRAGMA page_count").fetchone()[0]
    used -= conn.execute("PRAGMA freelist_count").fetchone()[0]
    return int(2 * used * page_size)


def switch_to_incremental(conn: sqlite3.Connection, path: Path) -> int:
    """Switch an older store to auto_vacuum = INCREMENTAL: one full VACUUM, refused when
    the disk lacks the room it needs. Returns the bytes it needed; 0 if already switched."""
    if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
        return 0
    needs = vacuum_needs(conn)
    home, temp = path.parent, Path(tempfile.gettempdir())
    # Half the room in each folder, all of it when both are on one filesystem.
    same = home.stat().st_dev == temp.stat().st_dev
    for folder in (home,) if same else (home, temp):
        free = shutil.disk_usage(folder).free
        if free < (needs if same else needs // 2):
            raise StateError(
                f"state store {path}: switching to incremental vacuum rewrites it once and"
                f" needs about {_mb(needs)} free ({_mb(free)} free in {folder}); free some"
                " disk (or set TMPDIR to a roomier folder), then run `provisioner prune"
                " --vacuum` again"
            )
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    conn.execute("VACUUM")
    with contextlib.suppress(sqlite3.Error):
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    return needs


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"
