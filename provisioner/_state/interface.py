"""The store's two seams, as a second backend (PostgreSQL, a later issue) must implement them.

``RunStore`` is exactly what a run calls (the pipeline: ``runner``, ``workspace_lane``,
``api``): register the run, look rows up, record intents, outcomes and quota windows, wait
for the writer, finish. ``StoreReader`` is what the read-only commands call (``report``'s
``export`` and ``status``, and ``validate``'s forecast): look rows and windows up, list
runs and replay a run's outcomes. ``SqliteStateStore`` (``store.py``) implements both; a
store opened with ``lock=False`` implements only ``StoreReader``.

``StoreTables`` is the third, for ``provisioner state copy`` (``copy.py``): a store's
tables as rows, read in one snapshot on the source and loaded in bulk on the target,
in one shape both backends speak (:data:`TABLES`, :data:`COLUMNS`: the SQLite tables').
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from provisioner._core.identity import RowKey
from provisioner._core.models import Outcome, Skip
from provisioner._state.codec import OUTCOME_COLUMNS
from provisioner._state.schema import Prior, QuotaWindow, RunRecord
from provisioner.errors import StateError


class RunStore(Protocol):
    """What one run of the pipeline calls, and nothing else."""

    def begin_run(
        self,
        run_id: str,
        manifest: str,
        started_at: float,
        deferred_header: tuple[str, ...] | None,
        settings: Mapping[str, object],
    ) -> None: ...
    def lookup_many(self, workspace: str, keys: Sequence[RowKey]) -> dict[RowKey, Prior]: ...
    async def intent(
        self,
        run_id: str,
        workspace: str,
        key: RowKey,
        send_id: str | None,
        line: int,
        *,
        wait: bool = True,
    ) -> None: ...
    def record(self, run_id: str, workspace: str, key: RowKey | None, outcome: Outcome) -> None: ...
    def record_skipped(self, run_id: str, workspace: str, skips: Sequence[Skip]) -> None: ...
    async def flush(self) -> None: ...
    async def throttle(self) -> None: ...
    def record_quota(
        self, workspace: str, reset_at: float, limit: int, remaining: int, spent_delta: int
    ) -> None: ...
    def quota_window(self, workspace: str, now: float) -> QuotaWindow | None: ...
    def finish_run(
        self,
        run_id: str,
        finished_at: float,
        exit_code: int,
        counts: Mapping[str, int],
        summary: Mapping[str, object],
    ) -> None: ...
    def close(self) -> None: ...


class StoreReader(Protocol):
    """What ``export``, ``status`` and ``validate`` read; they never write."""

    @property
    def path(self) -> Path: ...
    def lookup_many(self, workspace: str, keys: Sequence[RowKey]) -> dict[RowKey, Prior]: ...
    def quota_window(self, workspace: str, now: float) -> QuotaWindow | None: ...
    def iter_outcomes(self, run_id: str) -> Iterator[Outcome]: ...
    def run_info(
        self, run_id: str
    ) -> tuple[RunRecord, tuple[str, ...] | None, dict[str, object]]: ...
    def workspaces(self) -> list[str]: ...
    def recent_runs(self, limit: int = 10) -> list[RunRecord]: ...
    def open_problems(self) -> dict[str, int]: ...
    def size_bytes(self) -> int: ...
    def close(self) -> None: ...


#: Every table a store's contents live in, in load order. Not data, so not copied: who
#: holds the store now (the lock file, PostgreSQL's leases) and the schema's version,
#: which each store's own opening writes.
TABLES = ("runs", "created", "intents", "outcomes", "quota_windows")
#: Each table's columns in the shape both backends read and load (the SQLite tables'; a
#: run's seq is kept, so the other tables' run_seq still name the same run).
COLUMNS: dict[str, tuple[str, ...]] = {
    "runs": (
        "seq", "run_id", "manifest", "pid", "started_at", "finished_at", "exit_code",
        "counts", "summary", "deferred_header", "settings",
    ),
    "created": ("workspace", "campaign_id", "key", "send_id", "run_seq", "created_at"),
    "intents": (
        "workspace", "campaign_id", "key", "state", "run_seq", "at", "send_id", "line",
    ),
    "outcomes": tuple(c.strip() for c in OUTCOME_COLUMNS.split(",")),
    "quota_windows": ("workspace", "reset_at", "quota_limit", "remaining", "spent"),
}  # fmt: skip
#: Each table's primary key: rows travel in a stable order.
ORDER = {
    "runs": "seq",
    "created": "workspace, campaign_id, key",
    "intents": "workspace, campaign_id, key",
    "outcomes": "run_seq, line",
    "quota_windows": "workspace, reset_at",
}
#: How a count of each table reads in a message.
NOUNS = {
    "runs": "runs",
    "created": "created combinations",
    "intents": "intents (in flight or in doubt)",
    "outcomes": "outcomes",
    "quota_windows": "quota windows",
}
#: A table's rows, in COLUMNS order.
Rows = Iterable[tuple[Any, ...]]


def describe(counts: Mapping[str, int]) -> str:
    """``3 runs, 12 created combinations, ...`` (every table, zeros too)."""
    return ", ".join(f"{counts.get(t, 0)} {NOUNS[t]}" for t in TABLES)


def not_empty(shown: str, counts: Mapping[str, int]) -> StateError:
    """The refusal of a copy's target that holds something: one line, naming the store
    (as messages may show it) and the fix."""
    held = ", ".join(f"{n} {NOUNS[t]}" for t, n in counts.items() if n)
    return StateError(
        f"state store {shown} is not empty ({held}); nothing was copied: copy into a new"
        " file, an empty database, or another schema (?schema=NAME)"
    )


class StoreTables(Protocol):
    """A store's tables as rows: what ``state copy`` reads and loads."""

    def counts(self) -> dict[str, int]:
        """Rows per table of :data:`TABLES`."""
        ...

    def workspaces(self) -> list[str]:
        """Every workspace label the tables (and PostgreSQL's leases) name."""
        ...

    def snapshot(self) -> contextlib.AbstractContextManager[Callable[[str], Rows]]:
        """A function from a table's name to its rows, all read in one consistent snapshot
        while the context lasts."""
        ...

    def load(self, rows_of: Callable[[str], Rows]) -> dict[str, int]:
        """Load every table's rows in one transaction; refuse (StateError, nothing
        written) if the store holds any row when it starts. Returns rows per table."""
        ...

    def close(self) -> None: ...


#: The name the Python API has used for the run's store (``run_pipeline(store=...)``).
StateStore = RunStore
