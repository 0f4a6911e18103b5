"""The state store: what every earlier run did, row by row, in SQLite.

Seams: ``interface.RunStore`` (what a run calls) and ``interface.StoreReader`` (what
export, status and validate read), both implemented by ``store.SqliteStateStore``;
``schema`` owns the tables and migrations, ``codec`` the row encoding, ``batch`` the
background writer, ``lock`` the one-run-per-store lock.
"""

from __future__ import annotations
