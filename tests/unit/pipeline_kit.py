"""A run's workers wired to a scripted sender and a fake clock: no sockets, no waiting.

``pipeline(tmp_path, sender, ...)`` builds a ``Run`` with one lane whose client is the
``ScriptedSender``, whose quota budget, breaker and retry backoff sleep on one
``FakeClock``, a real state store in ``tmp_path`` and a sink that keeps the outcomes.
``Kit.send(rows)`` puts the rows on the lane's queue and runs the lane's workers to the end,
as ``api._run`` does, and returns the outcomes in the order they were written.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from provisioner._config.settings import Settings, build_settings
from provisioner._core.identity import RowKey
from provisioner._core.models import Outcome, Row, Skip, Status
from provisioner._pipeline.runner import Run
from provisioner._pipeline.workspace_lane import Job, Lane
from provisioner._state.opening import open_store
from provisioner._state.store import SqliteStateStore
from provisioner.testing import FakeClock, ScriptedSender

KEY_ENV = {"BRAZE_API_KEY": "unit-test-key-0123456789"}


@dataclass
class ListSink:
    """A ResultSink that keeps every outcome in memory."""

    outcomes: list[Outcome] = field(default_factory=list)
    committed: bool = False

    def write(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)

    def write_skipped(self, skips: Sequence[Skip]) -> None:
        for r, _key, send_id, run_id, at, _ in skips:
            self.outcomes.append(
                Outcome(r.line, Status.SKIPPED, r.campaign_id, send_id,
                        created_run=run_id, created_at=at)
            )  # fmt: skip

    def commit(self, summary: Mapping[str, object]) -> None:
        self.committed = True

    def abort(self) -> None:
        self.outcomes.clear()


def row(line: int, campaign_id: str = "camp-1", send_id: str | None = None) -> Row:
    """A valid manifest row."""
    return Row(line=line, campaign_id=campaign_id, send_id=send_id, columns=())


def key_of(r: Row, occurrence: int = 1) -> RowKey:
    """The row's identity, as ``seen.SeenIndex`` gives it (the n-th row without send_id)."""
    return (r.campaign_id, f"s:{r.send_id}" if r.send_id else f"n:{occurrence}")


@dataclass
class Kit:
    """One run's lane, its fakes and its outputs."""

    run: Run
    lane: Lane
    sender: ScriptedSender
    clock: FakeClock
    sink: ListSink
    store: SqliteStateStore

    async def send(self, rows: Sequence[Row]) -> list[Outcome]:
        """Queue ``rows`` (send_id-less rows numbered per campaign) and run the workers
        until every row has its outcome."""
        workers = [
            asyncio.create_task(self.run.work(self.lane)) for _ in range(self.lane.concurrency)
        ]
        occurrences: dict[str, int] = {}
        for r in rows:
            n = occurrences[r.campaign_id] = occurrences.get(r.campaign_id, 0) + 1
            await self.lane.queue.put(Job(r, key_of(r, n), r.send_id))
        for _ in workers:
            await self.lane.queue.put(None)
        await asyncio.gather(*workers)
        await self.store.flush()
        return list(self.sink.outcomes)


def settings_for(tmp_path: Path, **cli: object) -> Settings:
    """Settings as the command line would give them; one worker and a fast pace unless
    told otherwise, so that the script's order is the requests' order."""
    given: dict[str, object] = {"concurrency": 1, "rate": 10_000.0, **cli}
    return build_settings(
        manifest=str(tmp_path / "m.csv"), out_dir=tmp_path / "out", cli=given, env=KEY_ENV
    )


@asynccontextmanager
async def pipeline(
    tmp_path: Path,
    sender: ScriptedSender,
    *,
    clock: FakeClock | None = None,
    store_path: Path | None = None,
    **cli: object,
) -> AsyncIterator[Kit]:
    """A Run with one lane talking to ``sender`` on ``clock``; its store is closed after."""
    clock = clock or FakeClock()
    settings = settings_for(tmp_path, **cli)
    store = open_store(store_path or tmp_path / "state.db")
    try:
        ws = settings.workspaces[0]
        lane = Lane(ws, settings, sender, clock=clock, sleep=clock.sleep)
        sink = ListSink()
        run = Run(
            settings, store=store, sink=sink, lanes={ws.name: lane}, default_lane=ws.name,
            run_id=f"run-{id(sink):x}", manifest_name="m.csv", sleep=clock.sleep,
        )  # fmt: skip
        store.begin_run(run.run_id, "m.csv", clock(), None, settings.public())
        yield Kit(run, lane, sender, clock, sink, store)
    finally:
        store.close()
