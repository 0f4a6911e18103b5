"""Cooperating workers (``run --group NAME`` on a PostgreSQL store): one manifest split
across processes and hosts, within one quota.

Every worker reads the whole manifest (so identities, occurrence numbers and duplicates
come out the same everywhere) but acts only on the rows of the chunks it claimed
(``_state/postgres_group.py``): a chunk is claimed when the reader reaches it (with several
workspaces, in turn: ``group_fair.py``), the rows of other workers' chunks are neither
sent nor written. When the reader reaches the end, the worker waits while other workers
hold live claims, and reads the manifest again for any chunk that became claimable (its
worker died: its lease expired; or it passed it by for fairness); it ends when every chunk
is done, or none is left that it could still take. A chunk is done once every one of its
rows has an outcome committed in the store and none was deferred; a chunk with deferred
rows (quota spent past --max-wait, a refused key) goes back to pending for a later run of
the group. A worker claims a chunk at most once per run, so workers that all defer a chunk
do not pass it round for ever.

The quota: each lane's ``SharedQuota`` (``group_quota.py``) reserves units of the
workspace's window in small batches in the database, and arms them before requests leave,
so the workers together never exceed what the server said remains, nor --quota, and a
dead worker's unarmed units come back.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from provisioner._config.settings import Settings
from provisioner._core.identity import RowKey
from provisioner._core.logs import get_logger
from provisioner._core.models import Outcome, RawRow, Row, RowError, Skip, Status
from provisioner._manifest.feed import Feed
from provisioner._manifest.reader import Manifest, manifest_for
from provisioner._manifest.seen import SeenIndex
from provisioner._pipeline.group_fair import FAIR_CHUNKS, Fairness, survey
from provisioner._pipeline.group_quota import RESERVE_UNITS, SharedQuota
from provisioner._pipeline.runner import Run
from provisioner._pipeline.workspace_lane import JobQueue, Lane
from provisioner._state.interface import RunStore
from provisioner._state.opening import is_database_url
from provisioner._state.postgres_group import Fingerprint, GroupHandle, worker_leases
from provisioner._state.store import state_location
from provisioner.errors import UsageError

log = get_logger(__name__)

#: How often finished chunks are marked done, and the longest wait between two looks at
#: the group while other workers hold claims.
MARK_EVERY_S = 0.25
POLL_MAX_S = 1.0


def check_group(settings: Settings) -> None:
    """--group needs a PostgreSQL store and a manifest file (read more than once)."""
    if not settings.state_group:
        return
    if not is_database_url(state_location(settings.state_path)):
        raise UsageError(
            f"--group {settings.state_group}: cooperating workers share a PostgreSQL store;"
            " pass --state postgresql://..."
        )
    if settings.manifest == "-":
        raise UsageError(
            f"--group {settings.state_group}: the manifest must be a file every worker can"
            " read whole (not standard input)"
        )


def worker_lease(settings: Settings, workspaces: Sequence[str]) -> list[str]:
    """The lease rows a new worker of the group takes instead of its workspaces' leases:
    its own, and a marker on each workspace (``postgres_group.worker_leases``)."""
    assert settings.state_group is not None
    return worker_leases(settings.state_group, uuid.uuid4().hex[:12], workspaces)


class GroupRun(Run):
    """A run that handles only the chunks it claims of a group's manifest."""

    def __init__(self, settings: Settings, *, group: GroupHandle, holder: str, **kw: Any) -> None:
        super().__init__(settings, **kw)
        self.group = group
        self.holder = holder
        self.gates: list[SharedQuota] = []
        self._size = group.chunk_rows
        self._mine: dict[int, int] = {}  # chunk -> epoch of this worker's claim
        self._tried: set[int] = set()  # chunks this run claimed (at most once each)
        self._decided: set[int] = set()  # chunks looked at in this pass
        self._this_pass: set[int] = set()  # chunks claimed in this pass: the rows we handle
        self._started: Counter[int] = Counter()  # rows of a chunk read (ours)
        self._emitted: Counter[int] = Counter()  # ... and given their outcome
        self._deferred: set[int] = set()  # ours with a deferred row: back to pending
        self._reached = -1  # the highest chunk the reader has read from, this pass
        self._pass_done = False
        self._settled: set[int] = set()  # marked done or released
        self.passes = 0
        self.chunks_done = 0
        self.fair = Fairness({})  # no survey: one workspace, nothing to share out

    # -- which rows are ours
    def chunk_of(self, line: int) -> int:
        return (line - 1) // self._size

    def owns(self, line: int) -> bool:
        # Only this pass's claims: a chunk of an earlier pass was read whole then.
        return (line - 1) // self._size in self._this_pass

    async def _take(self, feed: Feed, n: int) -> tuple[list[RawRow | RowError], bool]:
        chunk, more = await super()._take(feed, n)
        if chunk:
            new = sorted({self.chunk_of(item.line) for item in chunk} - self._decided)
            todo = [c for c in new if c not in self._tried and self._may_claim()]
            if todo and self.fair.active:
                if self.fair.stale():
                    self.fair.saw(await asyncio.to_thread(self.group.claimable, self._tried))
                todo = self.fair.pick(todo, self._unfinished())
            if todo:
                got = await asyncio.to_thread(self.group.claim, todo, time.time())
                self._mine.update(got)
                self._this_pass.update(got)
                self._tried.update(got)  # a chunk held by a live worker may be tried again
                if got:
                    log.debug("chunks_claimed", chunks=sorted(got), run_id=self.run_id)
            self._decided.update(new)
            for item in chunk:
                c = self.chunk_of(item.line)
                if c in self._this_pass:
                    self._started[c] += 1
                if c > self._reached:
                    self._reached = c
        return chunk, more

    async def _identify(self, seen: SeenIndex, rows: list[Row], *, wait: bool = False) -> None:
        # Each batch dispatched before the next is read: the reader claims chunks as it
        # reads, so reading a batch ahead (the lone run's overlap) would claim chunks this
        # worker cannot start yet, which late workers could have taken.
        await super()._identify(seen, rows, wait=True)

    def _may_claim(self) -> bool:
        """Claim no more once the run stops (a signal, failed outputs)."""
        return self.stop_reason is None

    # -- outcomes, counted per chunk
    def emit(self, outcome: Outcome, key: RowKey | None, lane: Lane | None = None) -> None:
        c = self.chunk_of(outcome.line)
        self._emitted[c] += 1
        if outcome.status is Status.DEFERRED:
            self._deferred.add(c)
        super().emit(outcome, key, lane)

    def _emit_skipped(self, lane: Lane, skips: list[Skip]) -> None:
        for skip in skips:
            self._emitted[self.chunk_of(skip[0].line)] += 1
        super()._emit_skipped(lane, skips)

    def _unfinished(self) -> list[int]:
        return [c for c in self._mine if c not in self._settled]

    def _complete(self) -> list[int]:
        """Our chunks whose rows have all been read and given an outcome."""
        return [
            c
            for c in self._mine
            if c not in self._settled
            and (c < self._reached or self._pass_done)
            and self._started[c] == self._emitted[c]
        ]

    async def _settle(self) -> None:
        """Mark finished chunks done (after the store committed their outcomes); hand
        those with deferred rows back (pending). Nothing once the run is stopping: its
        last rows are deferred as interrupted, and its claims lapse with its lease."""
        if self.stop_reason is not None or self.output_error is not None:
            return
        complete = self._complete()
        if not complete:
            return
        await self.store.flush()
        done = {c: self._mine[c] for c in complete if c not in self._deferred}
        back = {c: self._mine[c] for c in complete if c in self._deferred}
        marked = await asyncio.to_thread(
            self.group.mark_done, done, back, self.run_id, time.time(), self.holder
        )
        self.chunks_done += marked
        self._settled.update(complete)

    async def _mark_periodically(self) -> None:
        while True:
            await asyncio.sleep(MARK_EVERY_S)
            await self._settle()

    # -- the passes
    async def read(self, manifest: Manifest) -> None:
        if len(self.lanes) > 1:  # the chunks' workspaces, to claim them in turn
            with manifest_for(self.settings) as surveyed:
                lanes = await survey(surveyed, self._size, self._lane_name)
            self.fair = Fairness(lanes)
            for lane in self.lanes.values():
                # Room for the chunks of its workspace a worker may hold: the reader then
                # passes on to the next workspace's instead of waiting on this one's queue
                # (its pace, its spent quota). At most BUFFER_BYTES a lane all the same.
                if isinstance(lane.queue, JobQueue):
                    lane.queue.widen(FAIR_CHUNKS * self._size)
            self.fair.saw(await asyncio.to_thread(self.group.claimable, self._tried))
            log.debug("group_survey", chunks=len(lanes), lanes=len(set(lanes.values())))
        marker = asyncio.create_task(self._mark_periodically())
        try:
            await self._passes(manifest)
        finally:
            marker.cancel()
            await asyncio.gather(marker, return_exceptions=True)

    async def _passes(self, manifest: Manifest) -> None:
        await self._one_pass(manifest)
        while self._stopped() is False and await self._more_to_do():
            again = manifest_for(self.settings)
            with again:
                self.manifest = again
                await self._one_pass(again)

    async def _one_pass(self, manifest: Manifest) -> None:
        self.passes += 1
        self._decided, self._this_pass = set(self._mine), set()
        self._reached, self._pass_done = -1, False
        await super().read(manifest)
        self._pass_done = True

    def _lane_name(self, row: Row) -> str | None:
        return self.lane_of(row).name if self._known_lane(row) else None

    def _stopped(self) -> bool:
        return self.stop_reason is not None or self.drain_abandoned or not self.read_to_end

    async def _more_to_do(self) -> bool:
        """After a pass: wait while other workers hold live claims; True when a chunk has
        become claimable (another pass), False when the group is done or nothing is left
        that this worker could take."""
        poll = min(POLL_MAX_S, self.group.location.lease_s / 3)
        while True:
            await self._settle()
            if self.stop_reason is not None:
                return False
            idle = not self._complete() and all(c in self._settled for c in self._mine)
            if idle:
                for gate in self.gates:  # nothing of ours in flight: let others use them
                    await asyncio.to_thread(gate.give_back, *gate.take_pool())
            claimable = await asyncio.to_thread(self.group.claimable, self._tried)
            progress = await asyncio.to_thread(self.group.progress)
            if progress.finished or (idle and not claimable and not progress.live):
                log.info(
                    "group_worker_done", group=self.group.group, run_id=self.run_id,
                    passes=self.passes, chunks_done=self.chunks_done,
                    group_done=progress.done, group_chunks=progress.total,
                )  # fmt: skip
                return False
            if claimable:
                self.fair.saw(claimable)
                if not self.fair.active or self.fair.pick(claimable, self._unfinished()):
                    return True
                # Held back for fairness: a slot frees when one of ours is marked done.
                await asyncio.sleep(MARK_EVERY_S)
                continue
            await asyncio.sleep(poll)

    def close(self) -> None:
        for gate in self.gates:
            try:
                gate.give_back(*gate.take_pool())
            except Exception as exc:  # the units come back at the window's end anyway
                log.warning("quota_give_back_failed", error=f"{type(exc).__name__}: {exc}")
        self.group.close()


def make_run(
    settings: Settings,
    *,
    store: RunStore,
    lanes: dict[str, Lane],
    run_id: str,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    **kw: Any,
) -> Run:
    """The run for ``settings``: a plain one, or with --group a worker of its group, which
    joins the group first (UsageError, exit 2, before anything is sent, when the manifest
    is not the group's)."""
    if not settings.state_group:
        return Run(settings, store=store, lanes=lanes, run_id=run_id, sleep=sleep, **kw)
    from provisioner._state.postgres import connect

    lease = getattr(store, "_lease", None)  # the store's lease row is this worker's
    location = getattr(store, "location", None)
    if lease is None or location is None:
        raise UsageError("--group needs the PostgreSQL store opened for a run")
    own = next(w for w in lease.workspaces if w.startswith("group:"))
    worker = own.rsplit(":", 1)[1]
    fp = Fingerprint.of(settings.manifest)
    handle = GroupHandle(
        connect(location, "joining the group"),
        location,
        settings.state_group,
        worker,
        settings.state_group_chunk,
    )
    handle.quota.holder = lease.holder  # its arms are fenced by the worker's lease
    try:
        made = handle.join(settings.manifest, fp, settings.state_group_chunk, time.time())
        handle.register(run_id, socket.gethostname(), os.getpid(), time.time())
        run = GroupRun(
            settings, group=handle, holder=lease.holder, store=store, lanes=lanes,
            run_id=run_id, sleep=sleep, **kw,
        )  # fmt: skip
    except BaseException:
        handle.close()
        raise
    for lane in lanes.values():
        gate = SharedQuota(handle, lane.label, min(RESERVE_UNITS, lane.concurrency))
        lane.gate = gate
        run.gates.append(gate)
    log.info(
        "group_joined", group=settings.state_group, worker=worker, made=made,
        chunks=handle.chunks, chunk_rows=handle.chunk_rows, lines=fp.lines,
    )  # fmt: skip
    return run
