"""Run exclusivity on PostgreSQL: a lease row per workspace, renewed by a heartbeat.

Not a session advisory lock: behind PgBouncer's transaction pooling a session lock is
taken on whichever server connection the pooler lends, and a dead client's session can
hold it for hours. A lease is a row (holder host/pid, epoch, expiry on the *database's*
clock, so the hosts' clocks do not matter):

* :meth:`Lease.acquire` takes every workspace of the run in one transaction, or none:
  a row that is held and unexpired makes it raise StateLockedError (exit 75); an
  expired one is taken over (its epoch goes up) and named in ``took_over_from``.
* A heartbeat thread renews the rows every ``ttl / 3``; a renewal that finds a row no
  longer ours (or fails) marks the lease lost.
* Locally, without a round trip: the lease is known to be ours until ``ttl`` after the
  last successful renewal *was sent* (the database counts its expiry from later), on
  the monotonic clock, which runs on while the process is frozen. Past that (a
  heartbeat late, a SIGSTOP, a VM freeze) :meth:`live` is False and the store refuses
  every call before the next request could leave (``PostgresStateStore._check_writable``).
* Fencing: every commit of the writer first checks, in the same transaction and with
  the rows locked ``FOR SHARE``, that each row still carries our epoch and has not
  expired. A holder paused past its expiry (SIGSTOP, a VM freeze) therefore commits
  nothing when it wakes, and since the store is fail-stop it sends nothing more.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from provisioner._state.lock import Holder
from provisioner.errors import StateLockedError

DEFAULT_TTL_S = 30.0
_NOW = "extract(epoch FROM clock_timestamp())"

#: The lease table (part of schema version 1, see postgres_schema._V1).
DDL = """CREATE TABLE {s}.leases (
        workspace TEXT PRIMARY KEY, holder TEXT, host TEXT, pid INTEGER,
        started TEXT, epoch BIGINT NOT NULL DEFAULT 0,
        expires_at DOUBLE PRECISION NOT NULL DEFAULT 0)"""


#: A group worker's marker on a workspace it works: ``WORKSPACE:group:NAME:WORKER``
#: (``postgres_group.worker_leases``), held and renewed like any lease row. A plain run
#: on the workspace is refused while a marker is live; a group worker is refused while
#: the workspace's plain row is. Group workers do not refuse each other.
MEMBER = ":group:"


class Lease:
    """The leases of one run on its workspaces; create with :meth:`acquire`."""

    def __init__(self, conn: Any, s: str, workspaces: list[str], holder: str, ttl: float) -> None:
        self.conn = conn
        self._s = s
        self.workspaces = workspaces
        self.holder = holder
        self.ttl = ttl
        self.epochs: dict[str, int] = {}
        self.took_over_from: Holder | None = None
        self.lost: str | None = None
        #: time.monotonic() until which no other run can have taken the lease over.
        self.valid_until = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_lost: Callable[[str], None] | None = None

    @classmethod
    def acquire(cls, conn: Any, s: str, workspaces: Sequence[str], shown: str, ttl: float) -> Lease:
        """Take the lease of every workspace, or raise StateLockedError naming a holder
        (a group worker's markers, ``MEMBER``: also a plain run holding their workspace;
        a plain run's rows: also a group worker's live marker on them)."""
        holder = uuid.uuid4().hex
        lease = cls(conn, s, sorted(set(workspaces)) or ["default"], holder, ttl)
        host, pid = socket.gethostname(), os.getpid()
        started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        sent = time.monotonic()
        with conn.transaction():
            # Frozen while it holds the rows (FOR UPDATE), this run would block every
            # other for ever: the server ends the transaction after the lease's length.
            conn.execute(
                "SELECT set_config('idle_in_transaction_session_timeout', %s, true)",
                (f"{int(ttl * 1000)}ms",),
            )
            for ws in lease.workspaces:  # sorted: two runs never wait on each other in a cycle
                plain, _, member = ws.partition(MEMBER)
                if member:  # a group worker's marker: no plain run may hold the workspace
                    _refuse_plain(conn, s, plain, shown, holder)
                conn.execute(
                    f"INSERT INTO {s}.leases (workspace) VALUES (%s) ON CONFLICT DO NOTHING", (ws,)
                )
                row = conn.execute(
                    f"SELECT holder, host, pid, started, epoch, expires_at > {_NOW}"
                    f" FROM {s}.leases WHERE workspace = %s FOR UPDATE",
                    (ws,),
                ).fetchone()
                old_holder, old_host, old_pid, old_started, epoch, live = row
                if old_holder is not None and live:
                    raise _in_use(
                        conn, s, shown, ws, (old_host, old_pid, old_started), "another run",
                        "wait for it to finish, or for its lease to expire if it died",
                    )  # fmt: skip
                if not member and not ws.startswith("group:"):
                    _refuse_group(conn, s, ws, shown, holder)
                if old_holder is not None:  # expired without a release: its holder died
                    lease.took_over_from = (int(old_pid or 0), str(old_started))
                conn.execute(
                    f"UPDATE {s}.leases SET holder = %s, host = %s, pid = %s,"
                    f" started = %s, epoch = %s, expires_at = {_NOW} + %s WHERE workspace = %s",
                    (holder, host, pid, started, epoch + 1, ttl, ws),
                )
                lease.epochs[ws] = epoch + 1
        lease.valid_until = sent + ttl
        return lease

    def start_heartbeat(self, on_lost: Callable[[str], None]) -> None:
        self._on_lost = on_lost
        self._thread = threading.Thread(
            target=self._beat, name="provisioner-lease-heartbeat", daemon=True
        )
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            sent = time.monotonic()
            try:
                cur = self.conn.execute(
                    f"UPDATE {self._s}.leases SET expires_at = {_NOW} + %s"
                    f" WHERE workspace = ANY(%s) AND holder = %s AND expires_at > {_NOW}",
                    (self.ttl, self.workspaces, self.holder),
                )
                renewed = cur.rowcount
            except Exception as exc:
                renewed = -1
                reason = f"could not be renewed ({type(exc).__name__})"
            else:
                reason = ""
            if renewed != len(self.workspaces):
                self._lost(self.lapsed() if not reason else self._on(reason))
                return
            self.valid_until = sent + self.ttl

    def _on(self, what: str) -> str:
        return f"the run's lease on {', '.join(self.workspaces)} {what}"

    def lapsed(self) -> str:
        """The one wording for a lease found no longer ours, wherever it is noticed (the
        heartbeat, a fenced commit, or the check before a send after a freeze)."""
        return self._on(
            "expired or was taken over by another run: it was not renewed in time"
            " (was this process paused?)"
        )

    def live(self) -> bool:
        """Whether the lease is still surely ours (no round trip: see the module doc)."""
        return time.monotonic() < self.valid_until

    def _lost(self, why: str) -> None:
        self.lost = why
        if self._on_lost is not None:
            self._on_lost(why)

    def fence(self, cur: Any) -> None:
        """Inside a writer transaction: raise unless every lease is still ours and live."""
        rows = cur.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM {self._s}.leases WHERE workspace = ANY(%s)"
            f" AND holder = %s AND expires_at > {_NOW} FOR SHARE) AS mine",
            (self.workspaces, self.holder),
        ).fetchone()[0]
        if rows != len(self.workspaces):
            why = self.lapsed()
            self._lost(why)
            raise LeaseLostError(why)

    def release(self) -> None:
        """Stop the heartbeat and give the rows back (only if they are still ours)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(Exception):  # unreachable: the lease simply expires
            self.conn.execute(
                f"UPDATE {self._s}.leases SET holder = NULL, expires_at = 0"
                " WHERE workspace = ANY(%s) AND holder = %s",
                (self.workspaces, self.holder),
            )


def _refuse_plain(conn: Any, s: str, ws: str, shown: str, mine: str) -> None:
    """(a group worker) StateLockedError if a plain run holds workspace ``ws`` (not this
    acquisition itself: ``state copy`` takes every row a store names).

    The plain row is locked ``FOR SHARE``: group workers do not exclude each other, but a
    plain run taking the row (``FOR UPDATE``) waits for this transaction, and then sees
    the marker it commits; and this one, if the plain run got there first, waits for it
    and reads the row it committed."""
    conn.execute(f"INSERT INTO {s}.leases (workspace) VALUES (%s) ON CONFLICT DO NOTHING", (ws,))
    row = conn.execute(
        f"SELECT holder, host, pid, started, expires_at > {_NOW} FROM {s}.leases"
        " WHERE workspace = %s FOR SHARE",
        (ws,),
    ).fetchone()
    holder, host, pid, started, live = row
    if holder is None or not live or holder == mine:
        return
    raise _in_use(
        conn, s, shown, ws, (host, pid, started), "a run without --group",
        "a group's workers cannot share it: wait for that run to finish (or for its lease"
        " to expire if it died)",
    )  # fmt: skip


def _in_use(
    conn: Any, s: str, shown: str, ws: str, held_by: tuple[object, object, object], who: str,
    then: str,
) -> StateLockedError:  # fmt: skip
    """The refusal of a workspace ``who`` holds (its lease row's host, pid, started)."""
    host, pid, started = held_by
    run_id = _holder_run(conn, s, pid, started)
    shown_run = f", run {run_id}" if run_id else ""
    return StateLockedError(
        f"state store {shown}: workspace {ws!r} is in use by {who} (host {host}, pid {pid},"
        f" started {started}{shown_run}); {then}",
        {"host": host, "pid": pid, "started": started, "run_id": run_id, "workspace": ws},
    )


def _refuse_group(conn: Any, s: str, ws: str, shown: str, mine: str) -> None:
    """(a plain run, holding row ``ws`` FOR UPDATE) StateLockedError if a group's worker
    holds a live marker on the workspace (``ws`` + MEMBER + group:worker)."""
    row = conn.execute(
        f"SELECT workspace, host, pid, started FROM {s}.leases WHERE starts_with(workspace,"
        f" %s) AND holder IS NOT NULL AND holder <> %s AND expires_at > {_NOW}"
        " ORDER BY workspace LIMIT 1",
        (ws + MEMBER, mine),
    ).fetchone()
    if row is None:
        return
    marker, host, pid, started = row
    group, _, worker = marker[len(ws + MEMBER) :].rpartition(":")
    raise StateLockedError(
        f"state store {shown}: workspace {ws!r} is being worked by group {group!r} (worker"
        f" {worker}, host {host}, pid {pid}, started {started}); run with --group {group} to"
        " join it, or wait for its workers to finish (or for their leases to expire if they"
        " died)",
        {"host": host, "pid": pid, "started": started, "group": group, "workspace": ws},
    )


def _holder_run(conn: Any, s: str, pid: object, started: object) -> str | None:
    """The run id of a lease's holder, once it has begun its run: the lease row predates
    the run id, so it is the latest unfinished run of that pid begun since the lease."""
    try:
        since = datetime.strptime(str(started), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None
    row = conn.execute(
        f"SELECT run_id FROM {s}.runs WHERE pid = %s AND finished_at IS NULL"
        " AND started_at >= %s ORDER BY seq DESC LIMIT 1",
        (pid, since.timestamp() - 1),
    ).fetchone()
    return None if row is None else str(row[0])


class LeaseLostError(RuntimeError):
    """A commit refused because this process no longer holds its lease."""
