"""The quota a group's workers share, in PostgreSQL (``run --group``; the worker's side
is ``_pipeline/group_quota.py``).

* ``group_quota``: a row per workspace window (the server's reset time): ``ceiling``
  (what the workers together may create in it) and ``taken`` (units handed out: the
  probes that learnt the window, and every worker's reservations).
* ``group_reservations``: a row per window and worker: ``reserved``, the units the
  worker holds of ``taken`` (granted, less what it gave back), and ``armed``, how many of
  them it may have spent. A worker spends only armed units, and arms them (a few at a
  time, ahead of need) in a transaction of its own that its lease fences: the mark is
  committed before any request of those units can leave.

A worker that dies (kill -9, a lost host) leaves its reservation behind. Once its lease
has expired it can send nothing more (its store is fail-stop, its arms are fenced), so
the units it reserved and never armed, ``reserved - armed``, are provably unspent: the
next reservation in that window, by any worker, returns them to the window's pool
(``taken`` goes down by as much) and leaves the dead reservation at ``reserved = armed``,
so they come back once. Armed units stay counted as spent whether or not their requests
left: nobody can know. Only the window being reserved in is reclaimed, so units come
back only to a window that is still open.

As for the reservations, these transactions do not wait for the WAL flush: a crash of
the database server itself may forget the last of them (an arm as well as the grant it
came from), so a window could be over-asked by what the workers held then; the server's
429 and the budget's pause still hold. A worker's death loses nothing: a commit is seen
by every other session at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

_NOW = "extract(epoch FROM clock_timestamp())"

DDL = (
    """CREATE TABLE IF NOT EXISTS {s}.group_quota (
        workspace TEXT NOT NULL, reset_at DOUBLE PRECISION NOT NULL,
        quota_limit INTEGER NOT NULL, ceiling INTEGER NOT NULL, taken INTEGER NOT NULL,
        PRIMARY KEY (workspace, reset_at))""",
    """CREATE TABLE IF NOT EXISTS {s}.group_reservations (
        workspace TEXT NOT NULL, reset_at DOUBLE PRECISION NOT NULL, grp TEXT NOT NULL,
        worker TEXT NOT NULL, reserved INTEGER NOT NULL, armed INTEGER NOT NULL,
        PRIMARY KEY (workspace, reset_at, grp, worker),
        CHECK (0 <= armed AND armed <= reserved))""",
)

#: Old windows are of no use to anyone: the tables stay a few rows long.
_KEEP_S = 86400 * 2

Tx = Callable[[str], contextlib.AbstractContextManager[Any]]


class SharedWindows:
    """One worker's access to the shared windows (through its group's transactions)."""

    def __init__(self, tx: Tx, schema: str, group: str, worker: str, lease: str) -> None:
        self._tx = tx
        self._s = schema
        self.group = group
        self.worker = worker
        self.lease = lease  # the worker's lease row, which fences its arms
        self.holder = ""  # the lease's holder id (set once the run has it)

    def current(self, workspace: str, now: float) -> tuple[float, int, int] | None:
        """The group's row for the workspace's window open at ``now`` (the run's clock,
        the one its quota budget uses): (reset_at, limit, units left), or None."""
        with self._tx("reading the shared quota") as conn:
            row = conn.execute(
                f"SELECT reset_at, quota_limit, ceiling - taken FROM {self._s}.group_quota"
                " WHERE workspace = %s AND reset_at > %s ORDER BY reset_at LIMIT 1",
                (workspace, now),
            ).fetchone()
        return None if row is None else (float(row[0]), int(row[1]), int(row[2]))

    def top_up(
        self,
        workspace: str,
        reset_at: float,
        limit: int,
        ceiling: int,
        probes: int,
        units: int,
        arm: int,
    ) -> tuple[int, int, int]:
        """One round trip: count ``probes`` (requests sent to learn the window) as taken;
        reserve up to ``units`` more of the window's budget, first returning to it what
        dead workers held unarmed; then arm up to ``arm`` of this worker's reserved units.
        Returns (units granted, units armed, units reclaimed from dead workers).

        The first worker to know a window makes its row with ``ceiling`` (what the server
        said remains, capped by --quota)."""
        key = (workspace, reset_at)
        granted = back = armed = 0
        with self._tx("reserving quota") as conn:
            # Not flushed before the answer (a WAL flush per reservation cost the workers
            # their pace on a busy disk): see the module doc.
            conn.execute("SET LOCAL synchronous_commit TO off")
            if units or probes:
                # The window's row first (locked by the upsert), the reservations' after,
                # here as in give_back: two workers never wait on each other in a cycle.
                conn.execute(
                    f"INSERT INTO {self._s}.group_quota AS q (workspace, reset_at, quota_limit,"
                    " ceiling, taken) VALUES (%s, %s, %s, %s, %s) ON CONFLICT (workspace,"
                    " reset_at) DO UPDATE SET taken = q.taken + excluded.taken",
                    (*key, limit, max(0, ceiling), probes),
                )
            if units:
                back = self._reclaim(conn, workspace, reset_at)
                if back:
                    conn.execute(
                        f"UPDATE {self._s}.group_quota SET taken = GREATEST(0, taken - %s)"
                        " WHERE workspace = %s AND reset_at = %s",
                        (back, *key),
                    )
                row = conn.execute(
                    f"WITH r AS (SELECT workspace, reset_at, LEAST(%s, ceiling - taken) AS n"
                    f" FROM {self._s}.group_quota WHERE workspace = %s AND reset_at = %s"
                    f" AND taken < ceiling FOR UPDATE) UPDATE {self._s}.group_quota AS q"
                    " SET taken = q.taken + r.n FROM r WHERE q.workspace = r.workspace"
                    " AND q.reset_at = r.reset_at RETURNING r.n",
                    (units, *key),
                ).fetchone()
                granted = 0 if row is None else int(row[0])
                if granted:
                    conn.execute(
                        f"INSERT INTO {self._s}.group_reservations AS r (workspace, reset_at,"
                        " grp, worker, reserved, armed) VALUES (%s, %s, %s, %s, %s, 0)"
                        " ON CONFLICT (workspace, reset_at, grp, worker)"
                        " DO UPDATE SET reserved = r.reserved + excluded.reserved",
                        (*key, self.group, self.worker, granted),
                    )
                for table in ("group_quota", "group_reservations"):
                    conn.execute(
                        f"DELETE FROM {self._s}.{table} WHERE workspace = %s AND reset_at < %s",
                        (workspace, reset_at - _KEEP_S),
                    )
            if arm:
                armed = self._arm(conn, workspace, reset_at, arm)
        return granted, armed, back

    def _reclaim(self, conn: Any, workspace: str, reset_at: float) -> int:
        """(in a reservation's transaction) The window's units that workers whose lease is
        no longer live (expired or released) reserved and never armed, taken back from
        their reservations: how many, to return to the window's pool.

        The rows are locked (FOR UPDATE) before they are read: a worker arming at the same
        moment either committed first (its arm is seen: those units stay spent) or finds
        its reservation at ``reserved = armed`` (it arms nothing)."""
        rows = conn.execute(
            f"SELECT grp, worker, reserved - armed FROM {self._s}.group_reservations r"
            " WHERE r.workspace = %s AND r.reset_at = %s AND r.reserved > r.armed AND NOT"
            f" EXISTS (SELECT 1 FROM {self._s}.leases l WHERE l.workspace = 'group:' ||"
            f" r.grp || ':' || r.worker AND l.holder IS NOT NULL AND l.expires_at > {_NOW})"
            " FOR UPDATE OF r",
            (workspace, reset_at),
        ).fetchall()
        if not rows:
            return 0
        conn.execute(
            f"UPDATE {self._s}.group_reservations AS r SET reserved = r.armed FROM"
            " unnest(%s::text[], %s::text[]) AS d(grp, worker) WHERE r.workspace = %s"
            " AND r.reset_at = %s AND r.grp = d.grp AND r.worker = d.worker",
            ([r[0] for r in rows], [r[1] for r in rows], workspace, reset_at),
        )
        return sum(int(r[2]) for r in rows)

    def _arm(self, conn: Any, workspace: str, reset_at: float, arm: int) -> int:
        """(in a transaction) Up to ``arm`` of this worker's reserved units marked as
        possibly spent; none once its lease is no longer live (fenced as its commits are)."""
        live = conn.execute(
            f"SELECT 1 FROM {self._s}.leases WHERE workspace = %s AND holder = %s"
            f" AND expires_at > {_NOW} FOR SHARE",
            (self.lease, self.holder),
        ).fetchone()
        if live is None:
            return 0
        row = conn.execute(
            f"SELECT reserved - armed FROM {self._s}.group_reservations WHERE workspace = %s"
            " AND reset_at = %s AND grp = %s AND worker = %s FOR UPDATE",
            (workspace, reset_at, self.group, self.worker),
        ).fetchone()
        n = 0 if row is None else min(arm, int(row[0]))
        if n:
            conn.execute(
                f"UPDATE {self._s}.group_reservations SET armed = armed + %s WHERE"
                " workspace = %s AND reset_at = %s AND grp = %s AND worker = %s",
                (n, workspace, reset_at, self.group, self.worker),
            )
        return n

    def give_back(self, workspace: str, reset_at: float, armed: int, spare: int) -> None:
        """Return units this worker holds and did not use: ``armed`` ones whose requests
        never left (it knows), and ``spare`` ones it never armed (the run ends, or stops
        sending). Never more than its reservation still holds (a reclaim may have taken
        the spare ones back already)."""
        if armed <= 0 and spare <= 0:
            return
        with self._tx("returning quota") as conn:
            conn.execute(
                f"SELECT 1 FROM {self._s}.group_quota WHERE workspace = %s AND reset_at = %s"
                " FOR UPDATE",
                (workspace, reset_at),
            )  # the window's row before the reservation's, as in top_up
            row = conn.execute(
                f"SELECT reserved, armed FROM {self._s}.group_reservations WHERE"
                " workspace = %s AND reset_at = %s AND grp = %s AND worker = %s FOR UPDATE",
                (workspace, reset_at, self.group, self.worker),
            ).fetchone()
            if row is None:
                return
            armed_back = min(max(0, armed), int(row[1]))
            spare_back = min(max(0, spare), int(row[0]) - int(row[1]))
            if not armed_back and not spare_back:
                return
            conn.execute(
                f"UPDATE {self._s}.group_reservations SET reserved = reserved - %s,"
                " armed = armed - %s WHERE workspace = %s AND reset_at = %s AND grp = %s"
                " AND worker = %s",
                (armed_back + spare_back, armed_back, workspace, reset_at, self.group, self.worker),
            )
            conn.execute(
                f"UPDATE {self._s}.group_quota SET taken = GREATEST(0, taken - %s)"
                " WHERE workspace = %s AND reset_at = %s",
                (armed_back + spare_back, workspace, reset_at),
            )
