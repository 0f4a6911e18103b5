"""Opening a state store: a file path is the SQLite store, a URL the PostgreSQL one.

The one place the backend is chosen. It sits apart from ``store.py`` because the
PostgreSQL store subclasses the SQLite one (its queue, writer thread and group commit):
``store.py`` importing ``postgres.py`` back would be an import cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from provisioner._state.store import SqliteStateStore, open_sqlite


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
