"""State stores for the scenarios: one that remembers nothing (scenario 1o's baseline for
the store's cost) and one filled as if an earlier run had created every row (scenario 5).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from support import KEY

from provisioner._config.access import ApiKey
from provisioner._core.identity import RowKey
from provisioner._core.models import Outcome, Skip, Status
from provisioner._state.opening import open_store
from provisioner._state.store import Prior, QuotaWindow, RunRecord


class NullStore:
    """A state store that remembers nothing: the baseline for the store's cost."""

    path = Path("/dev/null")

    def begin_run(
        self,
        run_id: str,
        manifest: str,
        started_at: float,
        deferred_header: tuple[str, ...] | None,
        settings: Mapping[str, object],
    ) -> None:
        """Nothing to record."""

    def lookup_many(self, workspace: str, keys: Sequence[RowKey]) -> dict[RowKey, Prior]:
        """Nothing is known."""
        return {}

    async def intent(
        self,
        run_id: str,
        workspace: str,
        key: RowKey,
        send_id: str | None,
        line: int,
        *,
        wait: bool = True,
    ) -> None:
        """Nothing to make durable."""

    def record(self, run_id: str, workspace: str, key: RowKey | None, outcome: Outcome) -> None:
        """Nothing to record."""

    def record_skipped(self, run_id: str, workspace: str, skips: Sequence[Skip]) -> None:
        """Nothing to record."""

    async def flush(self) -> None:
        """Nothing pending."""

    async def throttle(self) -> None:
        """Nothing pending."""

    def record_quota(
        self, workspace: str, reset_at: float, limit: int, remaining: int, spent_delta: int
    ) -> None:
        """Nothing to record."""

    def quota_window(self, workspace: str, now: float) -> QuotaWindow | None:
        """No window known."""
        return None

    def finish_run(
        self,
        run_id: str,
        finished_at: float,
        exit_code: int,
        counts: Mapping[str, int],
        summary: Mapping[str, object],
    ) -> None:
        """Nothing to record."""

    def iter_outcomes(self, run_id: str) -> Iterator[Outcome]:
        """No outcomes."""
        return iter(())

    def run_info(self, run_id: str) -> tuple[RunRecord, tuple[str, ...] | None, dict[str, object]]:
        """No runs."""
        raise KeyError(run_id)

    def recent_runs(self, limit: int = 10) -> list[RunRecord]:
        """No runs."""
        return []

    def open_problems(self) -> dict[str, int]:
        """No problems."""
        return {}

    def close(self) -> None:
        """Nothing to close."""


def prepopulate(path: Path | str, rows: int) -> None:
    """A store in which an earlier run created every row of ``support.write_manifest(path,
    rows, "")`` (as a real run records them)."""
    store = open_store(path)

    async def fill() -> None:
        store.begin_run("seed-run", "seed.csv", time.time(), None, {})
        ws = ApiKey(KEY).label
        for i in range(rows):
            cid, sid = f"c{i:08d}", f"s{i:08d}"
            store.record(
                "seed-run",
                ws,
                (cid, "s:" + sid),
                Outcome(i + 2, Status.CREATED, cid, sid, (("campaign_id", cid), ("send_id", sid))),
            )
            if i % 5000 == 0:
                await store.throttle()
        await store.flush()
        store.finish_run("seed-run", time.time(), 0, {"created": rows}, {})

    asyncio.run(fill())
    store.close()
