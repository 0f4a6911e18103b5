"""Cooperating workers on PostgreSQL (``run --group NAME``): the group, its chunks, the
workers' claims and the quota they share, all in the database they already use.

* ``groups``: one row per group (name, the manifest's sha256 digest, byte length and
  line count, the chunk size), made by the first worker; a worker whose manifest differs
  is refused before it sends anything.
* ``group_chunks``: the manifest cut into fixed ranges of physical lines (chunk ``c`` is
  lines ``c*size+1 .. (c+1)*size``), each ``pending``, ``claimed`` by one worker (with an
  epoch that goes up at every claim) or ``done`` by the run that finished it.
* A claim lives as long as its worker's lease: each worker holds the lease row
  ``group:NAME:WORKER`` (``postgres_lease.py``: heartbeat, expiry on the database's clock,
  fencing of every commit). A claim whose worker's lease has expired (or was released) can
  be taken over; claims and takeovers are one ``UPDATE`` over rows chosen ``FOR UPDATE SKIP
  LOCKED``, so a chunk is never claimed twice while its claim is live.
* ``group_quota`` and ``group_reservations``: the windows' budget the workers share, and
  each worker's reservation in them (``postgres_group_quota.py``).

The tables are created on first use (``CREATE TABLE IF NOT EXISTS`` under the store's
advisory lock), apart from the store's numbered migrations: a store that never ran a group
never has them.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioner._core.models import Outcome
from provisioner._state import postgres_schema as pg
from provisioner._state.codec import decode_outcome
from provisioner._state.postgres_group_quota import DDL as QUOTA_DDL
from provisioner._state.postgres_group_quota import SharedWindows
from provisioner._state.postgres_lease import MEMBER
from provisioner.errors import StateError, UsageError

_NOW = "extract(epoch FROM clock_timestamp())"

_DDL = (
    """CREATE TABLE IF NOT EXISTS {s}.groups (
        name TEXT PRIMARY KEY, manifest TEXT NOT NULL, digest TEXT NOT NULL,
        length BIGINT NOT NULL, lines BIGINT NOT NULL, chunk_rows INTEGER NOT NULL,
        chunks INTEGER NOT NULL, created_at DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS {s}.group_chunks (
        grp TEXT NOT NULL, chunk INTEGER NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'claimed', 'done')),
        worker TEXT, epoch BIGINT NOT NULL DEFAULT 0, run_id TEXT,
        claimed_at DOUBLE PRECISION, done_at DOUBLE PRECISION, PRIMARY KEY (grp, chunk))""",
    """CREATE TABLE IF NOT EXISTS {s}.group_workers (
        grp TEXT NOT NULL, worker TEXT NOT NULL, run_id TEXT, host TEXT, pid INTEGER,
        started_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (grp, worker))""",
)


def lease_name(group: str, worker: str) -> str:
    """The lease row a group worker holds (in the leases table's workspace column)."""
    return f"group:{group}:{worker}"


def worker_leases(group: str, worker: str, workspaces: Sequence[str]) -> list[str]:
    """The lease rows a group worker takes: its own, and a marker on each workspace it
    works (``postgres_lease.MEMBER``), so that plain runs and the group exclude each
    other on a workspace while the group's workers share it."""
    own = lease_name(group, worker)
    return [own, *(f"{ws}{MEMBER}{group}:{worker}" for ws in workspaces)]


#: SQL true when the claim of ``group_chunks`` row ``c`` is live (its worker's lease is).
_LIVE = (
    "EXISTS (SELECT 1 FROM {s}.leases l WHERE l.workspace = 'group:' || c.grp || ':' ||"
    f" c.worker AND l.holder IS NOT NULL AND l.expires_at > {_NOW})"
)


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What identifies a manifest for a group: digest and length of its bytes, its lines."""

    digest: str
    length: int
    lines: int

    @classmethod
    def of(cls, path: str) -> Fingerprint:
        """Read ``path`` once: sha256 and length of its bytes; its physical (LF) lines,
        counted in the decompressed text when it is gzip (the reader's line numbers)."""
        sha, length, lines, last = hashlib.sha256(), 0, 0, b"\n"
        inflate: Any = None
        with Path(path).open("rb") as fh:
            while block := fh.read(1 << 20):
                if length == 0 and block[:2] == b"\x1f\x8b":
                    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
                sha.update(block)
                length += len(block)
                text = block if inflate is None else inflate.decompress(block)
                if text:
                    lines += text.count(b"\n")
                    last = text[-1:]
        return cls(sha.hexdigest(), length, lines + (last != b"\n"))


@dataclass(frozen=True, slots=True)
class Progress:
    """A group's chunks by state: done, pending, claimed by a live worker, claimable
    (claimed by a worker whose lease expired)."""

    total: int
    done: int
    pending: int
    live: int
    expired: int

    @property
    def finished(self) -> bool:
        return self.done == self.total


class GroupHandle:
    """One worker's view of its group, on a connection of its own (thread-safe: the run
    calls it from worker threads through ``asyncio.to_thread``)."""

    def __init__(
        self, conn: Any, location: pg.Location, group: str, worker: str, chunk_rows: int
    ) -> None:
        self.conn = conn
        self.location = location
        self._s = location.schema
        self.group = group
        self.worker = worker
        self.chunk_rows = chunk_rows
        self.chunks = 0
        self._lock = threading.Lock()
        #: The quota the workers share (its own module), in this handle's transactions.
        self.quota = SharedWindows(self._tx, self._s, group, worker, lease_name(group, worker))

    @contextlib.contextmanager
    def _tx(self, doing: str) -> Iterator[Any]:
        with self._lock:
            try:
                with self.conn.transaction():
                    yield self.conn
            except (StateError, UsageError):
                raise
            except Exception as exc:
                raise pg.describe(self.location, exc, doing) from None

    def _sql(self, sql: str) -> str:
        return sql.replace("{live}", _LIVE).format(s=self._s)

    # -- joining

    def join(self, manifest: str, fp: Fingerprint, chunk_rows: int, now: float) -> bool:
        """Create the group or check this manifest against it; True if this worker made it.
        Raises UsageError (exit 2) when the manifest is not the group's."""
        with self._tx("joining the group") as conn:
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                (f"{pg.APPLICATION}:{self._s}",),
            )
            for ddl in (*_DDL, *QUOTA_DDL):
                conn.execute(ddl.format(s=self._s))
            chunks = max(1, -(-fp.lines // chunk_rows))
            made = conn.execute(
                f"INSERT INTO {self._s}.groups (name, manifest, digest, length, lines,"
                " chunk_rows, chunks, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                (self.group, manifest, fp.digest, fp.length, fp.lines, chunk_rows, chunks, now),
            ).rowcount
            row = conn.execute(
                f"SELECT manifest, digest, length, lines, chunk_rows, chunks FROM"
                f" {self._s}.groups WHERE name = %s",
                (self.group,),
            ).fetchone()
            theirs, digest, length, _lines, size, chunks = row
            if (digest, length) != (fp.digest, fp.length):
                raise UsageError(
                    f"group {self.group!r}: manifest {manifest} ({fp.length} bytes, sha256"
                    f" {fp.digest[:12]}) is not the group's ({theirs}: {length} bytes, sha256"
                    f" {digest[:12]}); give every worker the same file, or another --group"
                )
            if made:
                conn.execute(
                    f"INSERT INTO {self._s}.group_chunks (grp, chunk)"
                    " SELECT %s, g FROM generate_series(0, %s) AS g",
                    (self.group, chunks - 1),
                )
            self.chunk_rows, self.chunks = int(size), int(chunks)
            return bool(made)

    def register(self, run_id: str, host: str, pid: int, now: float) -> None:
        """Name this worker's run (status shows it per worker)."""
        with self._tx("registering the worker") as conn:
            conn.execute(
                f"INSERT INTO {self._s}.group_workers (grp, worker, run_id, host, pid,"
                " started_at) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (grp, worker)"
                " DO UPDATE SET run_id = excluded.run_id",
                (self.group, self.worker, run_id, host, pid, now),
            )

    # -- chunks

    def claim(self, chunks: Sequence[int], now: float) -> dict[int, int]:
        """Claim those of ``chunks`` that are pending or whose claim has expired; the ones
        this worker got, with their epochs. Rows another transaction holds are skipped."""
        if not chunks:
            return {}
        with self._tx("claiming chunks") as conn:
            rows = conn.execute(
                self._sql(
                    "UPDATE {s}.group_chunks AS g SET state = 'claimed', worker = %s,"
                    " epoch = g.epoch + 1, claimed_at = %s WHERE (g.grp, g.chunk) IN"
                    " (SELECT c.grp, c.chunk FROM {s}.group_chunks c WHERE c.grp = %s AND"
                    " c.chunk = ANY(%s) AND (c.state = 'pending' OR (c.state = 'claimed'"
                    " AND NOT {live})) FOR UPDATE SKIP LOCKED) RETURNING g.chunk, g.epoch"
                ),
                (self.worker, now, self.group, list(chunks)),
            ).fetchall()
        return {int(c): int(e) for c, e in rows}

    def mark_done(
        self, done: dict[int, int], back: dict[int, int], run_id: str, now: float, holder: str
    ) -> int:
        """Mark claimed chunks done by ``run_id`` (their outcomes are committed) and hand
        ``back`` (chunks with deferred rows) to pending: only those still claimed by this
        worker at the same epoch, and only while this worker's lease is live (fenced like
        the store's commits). Returns how many were marked done."""
        if not done and not back:
            return 0
        with self._tx("marking chunks done") as conn:
            live = conn.execute(
                f"SELECT 1 FROM {self._s}.leases WHERE workspace = %s AND holder = %s"
                f" AND expires_at > {_NOW} FOR SHARE",
                (lease_name(self.group, self.worker), holder),
            ).fetchone()
            if live is None:
                return 0
            marked = 0
            where = (
                " FROM unnest(%s::int[], %s::bigint[]) AS m(chunk, epoch) WHERE g.grp = %s"
                " AND g.chunk = m.chunk AND g.epoch = m.epoch AND g.worker = %s"
                " AND g.state = 'claimed'"
            )
            if done:
                marked = conn.execute(
                    f"UPDATE {self._s}.group_chunks AS g SET state = 'done', run_id = %s,"
                    " done_at = %s" + where,
                    (run_id, now, list(done), list(done.values()), self.group, self.worker),
                ).rowcount
            if back:
                conn.execute(
                    f"UPDATE {self._s}.group_chunks AS g SET state = 'pending', worker = NULL"
                    + where,
                    (list(back), list(back.values()), self.group, self.worker),
                )
            return int(marked)

    def claimable(self, tried: set[int]) -> list[int]:
        """Chunks pending or claimed by a dead worker, that this run has not tried."""
        with self._tx("reading the group's chunks") as conn:
            rows = conn.execute(
                self._sql(
                    "SELECT c.chunk FROM {s}.group_chunks c WHERE c.grp = %s AND"
                    " (c.state = 'pending' OR (c.state = 'claimed' AND NOT {live}))"
                    " ORDER BY c.chunk"
                ),
                (self.group,),
            ).fetchall()
        return [int(r[0]) for r in rows if int(r[0]) not in tried]

    def progress(self) -> Progress:
        with self._tx("reading the group's progress") as conn:
            row = conn.execute(
                self._sql(
                    "SELECT count(*), count(*) FILTER (WHERE state = 'done'),"
                    " count(*) FILTER (WHERE state = 'pending'),"
                    " count(*) FILTER (WHERE state = 'claimed' AND {live}),"
                    " count(*) FILTER (WHERE state = 'claimed' AND NOT {live})"
                    " FROM {s}.group_chunks c WHERE c.grp = %s"
                ),
                (self.group,),
            ).fetchone()
        return Progress(*(int(v) for v in row))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


# -- the read side: export --group and status


@dataclass(frozen=True, slots=True)
class GroupInfo:
    name: str
    manifest: str
    lines: int
    chunk_rows: int
    chunks: int


def group_info(conn: Any, location: pg.Location, group: str) -> GroupInfo:
    """The group's row; UsageError (exit 2) naming the known groups if there is none."""
    s = location.schema
    try:
        exists = conn.execute(
            "SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename = 'groups'", (s,)
        ).fetchone()
        row = None
        names: list[str] = []
        if exists:
            row = conn.execute(
                f"SELECT name, manifest, lines, chunk_rows, chunks FROM {s}.groups WHERE name = %s",
                (group,),
            ).fetchone()
            names = [r[0] for r in conn.execute(f"SELECT name FROM {s}.groups ORDER BY 1")]
    except Exception as exc:
        raise pg.describe(location, exc, "reading the group") from None
    if row is None:
        known = ", ".join(names[:10]) or "none"
        raise UsageError(
            f"state store {location.shown} has no group {group!r} (groups: {known}); check --group"
        )
    return GroupInfo(row[0], row[1], int(row[2]), int(row[3]), int(row[4]))


def chunk_states(conn: Any, location: pg.Location, group: str) -> list[tuple[int, str, str | None]]:
    """Every chunk of the group: (chunk, state, run_id), in order."""
    s = location.schema
    rows = conn.execute(
        f"SELECT chunk, state, run_id FROM {s}.group_chunks WHERE grp = %s ORDER BY chunk",
        (group,),
    ).fetchall()
    return [(int(c), str(st), r) for c, st, r in rows]


def workers_report(conn: Any, location: pg.Location, group: str) -> list[dict[str, object]]:
    """Each worker of the group: its run, host, pid, whether its lease is live, and its
    chunks claimed now and done."""
    s = location.schema
    rows = conn.execute(
        f"SELECT w.worker, w.run_id, w.host, w.pid, w.started_at,"
        f" EXISTS (SELECT 1 FROM {s}.leases l WHERE l.workspace = 'group:' || w.grp || ':'"
        f" || w.worker AND l.holder IS NOT NULL AND l.expires_at > {_NOW}),"
        " count(c.chunk) FILTER (WHERE c.state = 'claimed'),"
        " count(c.chunk) FILTER (WHERE c.state = 'done')"
        f" FROM {s}.group_workers w LEFT JOIN {s}.group_chunks c ON c.grp = w.grp"
        " AND c.worker = w.worker WHERE w.grp = %s GROUP BY w.grp, w.worker, w.run_id,"
        " w.host, w.pid, w.started_at ORDER BY w.started_at",
        (group,),
    ).fetchall()
    names = ("worker", "run_id", "host", "pid", "started_at")
    return [
        {
            **dict(zip(names, r[:5], strict=True)),
            "live": bool(r[5]),
            "chunks_claimed": int(r[6]),
            "chunks_done": int(r[7]),
        }
        for r in rows
    ]


def chunk_outcomes(
    conn: Any,
    location: pg.Location,
    run_seq: int,
    first_line: int,
    last_line: int,
    run_id_of: Any,
) -> list[Outcome]:
    """The outcomes ``run_seq`` recorded for lines ``first_line..last_line``."""
    s = location.schema
    rows = conn.execute(
        "SELECT run_seq, workspace, key, status, created_seq, created_text, columns,"
        " columns_bin, line, campaign_id, send_id, attempts, http_status, latency_ms, error,"
        " message, retryable, field, duplicate_of, reason, created_at"
        f" FROM {s}.outcomes WHERE run_seq = %s AND line BETWEEN %s AND %s ORDER BY line",
        (run_seq, first_line, last_line),
    ).fetchall()
    return [decode_outcome(pg.unfix_outcome(r), run_id_of) for r in rows]
