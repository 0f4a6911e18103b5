"""The SQLite store's schema steps after the first (``schema.MIGRATIONS`` lists them all,
``schema._v1`` creates a new file): each takes a connection inside the migrating
transaction and leaves the file one version further."""

from __future__ import annotations

import sqlite3


def v2_pruned_at(conn: sqlite3.Connection) -> None:
    # Retention (retention.py): a pruned run keeps its runs row (its seq names the creator
    # of created rows and of skipped outcomes) with the time it was pruned.
    conn.execute("ALTER TABLE runs ADD COLUMN pruned_at REAL")


_BLOCKS = (
    # Compact outcome records (blocks.py): a batch of a run's skipped rows (references to
    # their creations) or deferred rows (their values), zlib-compressed.
    """CREATE TABLE blocks (
        run_seq INTEGER NOT NULL, first_line INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('skipped', 'deferred')),
        last_line INTEGER NOT NULL, rows INTEGER NOT NULL, data BLOB NOT NULL,
        PRIMARY KEY (run_seq, first_line, kind)) WITHOUT ROWID""",
    # The line of the creation's outcome in its run (NULL: unknown), which a skipped
    # row refers to.
    "ALTER TABLE created ADD COLUMN line INTEGER",
)


def v3_blocks(conn: sqlite3.Connection) -> None:
    for statement in _BLOCKS:
        conn.execute(statement)
    # Existing creations: each finds its outcome's line, and that outcome its creation's
    # time, which skipped rows show. A pass over each table in Python, a batch at a time
    # (UPDATE ... FROM needs SQLite 3.33, and a correlated subquery would scan outcomes
    # once per creation): ~1M rows in a few seconds, memory flat.
    rows = conn.execute(
        "SELECT line, workspace, campaign_id, key, run_seq FROM outcomes WHERE status = 'created'"
    )
    while batch := rows.fetchmany(10_000):
        conn.executemany(
            "UPDATE created SET line = ? WHERE workspace = ? AND campaign_id = ? AND key = ?"
            " AND run_seq = ?",
            batch,
        )
    rows = conn.execute("SELECT created_at, run_seq, line FROM created WHERE line IS NOT NULL")
    while batch := rows.fetchmany(10_000):
        conn.executemany(
            "UPDATE outcomes SET created_at = ? WHERE run_seq = ? AND line = ?"
            " AND status = 'created' AND created_at IS NULL",
            batch,
        )
