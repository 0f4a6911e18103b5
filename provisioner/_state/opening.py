"""Opening a state store: a file path is the SQLite store, a URL the PostgreSQL one.

The one place the backend is chosen. It sits apart from ``store.py`` because the
PostgreSQL store subclasses the SQLite one (its queue, writer thread and group commit):
``store.py`` importing ``postgres.py`` back would be an import cycle.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from provisioner._state import schema
from provisioner._state.lock import RunLock
from provisioner._state.store import SqliteStateStore
from provisioner.errors import StateError


def is_database_url(location: Path | str) -> bool:
    """True for a ``postgresql://`` or ``postgres://`` URL (any case)."""
    return isinstance(location, str) and location.lower().startswith(
        ("postgresql://", "postgres://")
    )


def open_store(
    path: Path | str,
    *,
    lock: bool = True,
    durable_intents: bool = True,
    workspaces: Sequence[str] = (),
    lock_wait: float = 0.0,
) -> SqliteStateStore:
    """Open (creating or upgrading) the store at ``path``: a file (SQLite) or a
    ``postgresql://`` URL (PostgreSQL, whose runs hold a lease per workspace: the
    ``workspaces`` store labels, instead of the file lock). Both have one interface.

    ``lock=True`` (runs) takes the run lock and starts the writer thread; ``lock=False``
    (status, export) opens for reading only. A lock or lease another run holds is
    waited for up to ``lock_wait`` seconds (``--lock-wait``; 0: refused at once). Raises
    StateError (StateLockedError: exit 75) with a one-line message naming the store (a
    URL without its password).
    """
    if is_database_url(path):
        assert isinstance(path, str)
        # Imported here: psycopg is an optional dependency, loaded only for a URL.
        from provisioner._state.postgres import open_postgres

        return open_postgres(
            path,
            lock=lock,
            durable_intents=durable_intents,
            workspaces=workspaces,
            lock_wait=lock_wait,
        )
    return open_sqlite(
        path,
        lock=lock,
        durable_intents=durable_intents,
        workspaces=workspaces,
        lock_wait=lock_wait,
    )


def open_sqlite(
    path: Path | str,
    *,
    lock: bool = True,
    durable_intents: bool = True,
    workspaces: Sequence[str] = (),
    lock_wait: float = 0.0,
) -> SqliteStateStore:
    """Open (creating or upgrading) the store at ``path``; parent folders are created.

    The SQLite store; ``provisioner._state.opening.open_store`` is the entry point that
    also opens a ``postgresql://`` URL. ``workspaces`` is accepted for that signature.

    ``lock=True`` (runs) takes the run lock and starts the writer thread; ``lock=False``
    (status, export) opens for reading only. ``durable_intents=False`` commits intents
    with synchronous=NORMAL like the rest (kill -9 safe, not power-cut safe).
    ``lock_wait``: seconds to wait for a held lock (``--lock-wait``) before refusing.
    Raises StateError (StateLockedError: exit 75) with a one-line message naming the path.
    """
    if isinstance(path, str) and path.lower().startswith(("postgresql://", "postgres://")):
        # The PostgreSQL store subclasses this one, so it cannot be imported from here
        # (an import cycle): ``provisioner._state.opening.open_store`` chooses.
        raise StateError("a postgresql:// state store is opened by _state.opening.open_store")
    path = Path(path).expanduser()
    if path.is_dir():
        raise StateError(f"state store {path} is a directory; pass --state PATH naming a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StateError(
            f"cannot create the folder of state store {path} ({exc.strerror});"
            " pass --state PATH in a writable folder"
        ) from None
    run_lock = RunLock.acquire(path, lock_wait) if lock else None
    conns: list[sqlite3.Connection] = []
    try:
        conns.append(schema.connect(path))
        schema.prepare(conns[0], path)  # under the run lock: a migration never races a run
        if lock:
            # Under the run lock, like a migration; status and export only filter them.
            schema.repair_quota_windows(conns[0], time.time())
            conns[0].execute("PRAGMA synchronous = NORMAL")
            conns.append(schema.connect(path))
        read = conns[-1]
        for pragma in ("query_only = ON", "temp_store = MEMORY", "cache_size = -32000"):
            read.execute(f"PRAGMA {pragma}")
        write = conns[0] if lock else None
        return SqliteStateStore(path, read, write, run_lock, durable_intents=durable_intents)
    except BaseException as exc:
        for conn in conns:
            conn.close()
        if run_lock is not None:
            run_lock.release()
        if isinstance(exc, sqlite3.Error):
            raise schema.describe(path, exc) from None
        raise
