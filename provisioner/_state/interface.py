"""The store's two seams, as a second backend (PostgreSQL, a later issue) must implement them.

``RunStore`` is exactly what a run calls (the pipeline: ``runner``, ``workspace_lane``,
``api``): register the run, look rows up, record intents, outcomes and quota windows, wait
for the writer, finish. ``StoreReader`` is what the read-only commands call (``report``'s
``export`` and ``status``, and ``validate``'s forecast): look rows and windows up, list
runs and replay a run's outcomes. ``SqliteStateStore`` (``store.py``) implements both; a
store opened with ``lock=False`` implements only ``StoreReader``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from provisioner._core.identity import RowKey
from provisioner._core.models import Outcome, Skip
from provisioner._state.schema import Prior, QuotaWindow, RunRecord


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


#: The name the Python API has used for the run's store (``run_pipeline(store=...)``).
StateStore = RunStore
