"""The pipeline: manifest -> validation -> state lookup -> workers -> outputs and state.

One reader task streams the manifest, validates rows, finds duplicates and rows already
done, and feeds each workspace's lane (``workspace_lane.py``): a bounded queue and a fixed
pool of worker coroutines (cheaper per request than a task per row, see
docs/engineering-notes.md) that send through the lane's breaker, quota budget and pacer.
Every row's outcome goes to the sink (the four output files) and to the state store.
Memory does not grow with the manifest: queues are bounded and nothing keeps rows once
they are written.

When a lane must stop (key refused, quota beyond --max-wait, an outage), or the whole run
(SIGTERM/SIGINT), workers stop taking rows and the rest is drained into ``deferred.csv``,
so every row still ends in exactly one output file.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Awaitable, Callable

from provisioner._braze.retry import RetryBudget, RetryPolicy
from provisioner._config.settings import Settings
from provisioner._core.identity import RowKey
from provisioner._core.logs import get_logger
from provisioner._core.models import BUFFER_BYTES, Outcome, RawRow, Row, RowError, Skip, Status
from provisioner._core.vocab import DeferReason, ExitCode
from provisioner._manifest.feed import Feed, feed_for
from provisioner._manifest.reader import Manifest
from provisioner._manifest.rules import validate
from provisioner._manifest.seen import Assigned, SeenIndex
from provisioner._outputs.files import ResultSink
from provisioner._outputs.summary import RunStats, was_sent
from provisioner._pipeline.campaign_check import CampaignCheck, refused
from provisioner._pipeline.decide import IN_DOUBT, SKIP, decide
from provisioner._pipeline.outcomes import (
    deferred,
    duplicate,
    failed_from_error,
    failed_in_doubt,
    unknown_workspace,
)
from provisioner._pipeline.sending import Sending
from provisioner._pipeline.workspace_lane import Job, Lane
from provisioner._state.interface import RunStore
from provisioner._state.schema import Prior
from provisioner.errors import (
    OutputError,
)

log = get_logger(__name__)

#: Rows looked up in the store together; fewer once the chunks they came in held
#: BUFFER_BYTES (wide rows: a few at a time).
_LOOKUP_BATCH = 512
#: A workspace's share of a resolved batch: its rows and what earlier runs left for them.
Resolved = tuple[Lane, list[Assigned], dict[RowKey, Prior]]
#: Seconds a stop (SIGTERM, SIGINT, an output failure) lets requests in flight finish
#: before it ends their waits: an answer normally takes well under a second.
STOP_GRACE_S = 3.0
#: While stopping, how long a silent manifest pipe is waited for before the drain ends.
_SILENT_PIPE_S = 2.0
#: row_failed events logged per run; the rest are only in failures.jsonl.
_ROW_FAILED_LOGGED = 100


def new_run_id() -> str:
    """A sortable, unique run id such as ``20261126T061500Z-3f9a1c``."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


class Run(Sending):
    """One run of the pipeline. Use ``api.run_pipeline`` rather than this class directly."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: RunStore,
        sink: ResultSink,
        lanes: dict[str, Lane],
        default_lane: str,
        run_id: str,
        manifest_name: str,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self.store = store
        self.sink = sink
        self.lanes = lanes
        self.default = lanes[default_lane]
        self.run_id = run_id
        self.manifest_name = manifest_name
        self.stats = RunStats()
        self.policy = RetryPolicy(
            attempts=settings.retry_attempts,
            max_time=settings.retry_max_time,
            backoff_base=settings.retry_backoff_base,
            backoff_cap=settings.retry_backoff_cap,
        )
        self.retry_budget = RetryBudget()
        self._sleep = sleep
        # Its own retry budget: listing retries must not eat the rows' share.
        self.campaign_check = CampaignCheck(
            settings.campaign_check, self.policy, RetryBudget(), sleep
        )
        self.stop_reason: str | None = None
        self.stop_exit: int | None = None
        self.drain_abandoned = False
        #: Set once the reader has reached the manifest's end (not a stop that cut it short).
        self.read_to_end = False
        self.manifest: Manifest | None = None
        self.rows_read = 0
        self._scoped = len(lanes) > 1
        #: Set when the output files could not be written: the run stops taking rows and
        #: keeps recording outcomes in the store, from which ``export`` writes the files.
        self.output_error: OutputError | None = None
        #: The batch being resolved in the worker thread (``_identify``), and the lock it
        #: holds meanwhile, so that the seen index is never closed under it.
        self._pending: asyncio.Future[list[Resolved]] | None = None
        self._resolving = threading.Lock()

    # -- stopping ----------------------------------------------------------------------
    def request_stop(self, reason: str, exit_code: int | None = None) -> None:
        """Stop taking rows in every lane (a signal); the rest is deferred with ``reason``."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self.stop_exit = exit_code
            log.warning("run_stopping", reason=reason, run_id=self.run_id)
            for lane in self.lanes.values():
                lane.interrupt(reason)
                # Requests in flight get a short grace to finish; then their waits end
                # (a server trickling its answer must not hold a stop for long): in doubt
                # without a send_id, deferred with one.
                abort = getattr(lane.client, "abort", None)
                if abort is not None:
                    asyncio.get_running_loop().call_later(STOP_GRACE_S, abort)
        elif reason == DeferReason.INTERRUPTED and self.stop_reason == DeferReason.INTERRUPTED:
            # A second signal: stop draining the manifest; in-flight requests still finish.
            self.drain_abandoned = True
            log.warning("drain_abandoned", run_id=self.run_id)

    def output_failed(self, exc: OutputError) -> None:
        """The output files cannot be written: stop sending (in-flight requests finish and
        are recorded in the store), defer the rest; the run then ends with exit 2."""
        if self.output_error is None:
            self.output_error = exc
            log.error("output_failed", run_id=self.run_id, error=str(exc))
            self.request_stop(DeferReason.OUTPUT_FAILED, ExitCode.USAGE)

    def _deferral_reason(self, lane: Lane) -> str | None:
        return self.stop_reason or lane.deferral_reason()

    # -- outcomes ----------------------------------------------------------------------
    def emit(self, outcome: Outcome, key: RowKey | None, lane: Lane | None = None) -> None:
        """Send one final outcome to the outputs, the state store and the counters."""
        lane = lane or self.default
        # The store first: if the output files fail (disk full), the outcome is kept there
        # and `provisioner export` writes it later.
        self.store.record(self.run_id, lane.label, key, outcome)
        if self.output_error is None:
            try:
                self.sink.write(outcome)
            except OutputError as exc:
                self.output_failed(exc)
        status = outcome.status
        # _value_ (the member's value, an enum attribute) rather than the slower .value
        # property: this runs for every row.
        self.stats.counts[status._value_] += 1
        lane.stats.counts[status._value_] += 1
        if was_sent(outcome):
            self.stats.sent += 1
            lane.stats.sent += 1
        if status is Status.FAILED:
            self.stats.errors[outcome.error or "unknown"] += 1
            failed = self.stats.counts[status._value_]
            if failed > _ROW_FAILED_LOGGED:
                if failed == _ROW_FAILED_LOGGED + 1:
                    # A million bad lines must not become a million lines of cron mail.
                    log.warning(
                        "row_failed_logging_capped", limit=_ROW_FAILED_LOGGED,
                        hint="the other failed rows are in failures.jsonl and counted in "
                        "summary.json's errors",
                    )  # fmt: skip
                return
            log.warning(
                "row_failed",
                line=outcome.line,
                campaign_id=outcome.campaign_id,
                error=outcome.error,
                message=outcome.message,
                http_status=outcome.http_status,
            )
        elif status is Status.DEFERRED:
            self.stats.deferred_reasons[outcome.reason or "unknown"] += 1
            lane.deferred_rows += 1

    # -- the reader --------------------------------------------------------------------
    async def read(self, manifest: Manifest) -> None:
        """Stream the manifest into outcomes (invalid, duplicate) and jobs (the lanes)."""
        self.manifest = manifest
        seen = SeenIndex(self.settings.derive_send_ids)
        feed = feed_for(manifest)
        try:
            rows: list[Row] = []
            held = 0  # the approximate bytes of the chunks ``rows`` came from
            n = 0
            while not self.drain_abandoned:
                # 256 records at a time: between chunks the workers and timers run, and
                # the state writer's queue stays bounded (long stretches of invalid rows).
                chunk, more = await self._take(feed, n)
                if not chunk and more:  # blank lines only: the loop had its turn
                    if rows:
                        # Rows read before a long run of blank lines go now, not once
                        # the blank lines end (a .gz of a billion of them: 18 minutes).
                        await self._identify(seen, rows, wait=True)
                        rows, held = [], 0
                    await asyncio.sleep(0)
                    continue
                if not chunk:
                    self.read_to_end = not self.drain_abandoned
                    break
                for item in chunk:
                    n += 1
                    if not self.owns(item.line):
                        if not isinstance(item, RowError):
                            row = validate(item)  # still identified: occurrences stay the same
                            if not isinstance(row, RowError) and self._known_lane(row):
                                rows.append(row)
                        if len(rows) >= _LOOKUP_BATCH:
                            await self._identify(seen, rows)
                            rows = []
                        continue
                    checked = item if isinstance(item, RowError) else validate(item)
                    if isinstance(checked, RowError):
                        self.emit(failed_from_error(checked), None)
                    elif checked.workspace is not None and checked.workspace not in self.lanes:
                        self.emit(unknown_workspace(checked, sorted(self.lanes)), None)
                    else:
                        rows.append(checked)
                    if len(rows) >= _LOOKUP_BATCH:
                        await self._identify(seen, rows)
                        rows, held = [], 0
                self.rows_read = n
                held = held + feed.taken_bytes if rows else 0
                # A pipe gone quiet: send what has arrived, now. Wide rows: what the chunks
                # held reached the byte budget.
                if rows and (not more or held >= BUFFER_BYTES):
                    await self._identify(seen, rows, wait=not more)
                    rows, held = [], 0
                await self.store.throttle()
                await asyncio.sleep(0)
            if rows:
                await self._identify(seen, rows)
            await self._dispatch_pending()
        finally:
            feed.close()
            # A batch may still be in the worker thread (a stop, an error): it ends first.
            with self._resolving:
                seen.close()

    async def _take(self, feed: Feed, n: int) -> tuple[list[RawRow | RowError], bool]:
        """The next chunk; from a pipe, without waiting on a silent writer past a stop."""
        if not feed.can_wait:
            return await feed.take(256)
        silent_since: float | None = None
        while True:
            try:  # cancelling take() loses nothing: it waits only while it holds no record
                return await asyncio.wait_for(feed.take(256), 0.25)
            except TimeoutError:
                if self.stop_reason is None:
                    continue
            # Stopping: what the pipe still sends goes to deferred.csv, but a silent
            # writer must not hold the exit until the next SIGKILL.
            now = time.monotonic()
            silent_since = silent_since or now
            if now - silent_since >= _SILENT_PIPE_S:
                self.drain_abandoned = True
                log.warning(
                    "drain_abandoned", run_id=self.run_id, rows_read=n,
                    hint=f"the manifest's pipe sent nothing for {_SILENT_PIPE_S:g} s; rows it "
                    "sends later were not read",
                )  # fmt: skip
                return [], False

    def owns(self, line: int) -> bool:
        """Whether this run handles the row at ``line`` (a group's worker: only the rows of
        its chunks; ``group.py``). The others are read and identified, nothing more."""
        return True

    def _known_lane(self, row: Row) -> bool:
        return row.workspace is None or row.workspace in self.lanes

    def close(self) -> None:
        """Release what the run holds beyond the store (a group worker's connection)."""

    def lane_of(self, row: Row) -> Lane:
        """The lane (workspace) a valid row goes to."""
        return self.lanes[row.workspace] if row.workspace is not None else self.default

    async def _identify(self, seen: SeenIndex, rows: list[Row], *, wait: bool = False) -> None:
        """Give a batch of valid rows their identities and dispatch it (repeats reported,
        the rest decided), in manifest order.

        The seen index and the store's lookup (SQLite queries, a batch at a time) run in a
        worker thread (``_resolve``) while the reader dispatches the previous batch and
        parses and validates the next one: the previous batch's resolution is awaited
        first, so batches keep their order, and SQLite runs without the GIL meanwhile.
        ``wait``: dispatch this batch now (a quiet pipe)."""
        # Backpressure: a run that only skips can outpace the writer thread; keep its
        # queue (and so memory) bounded.
        await self.store.throttle()
        previous = await self._take_pending()
        # The next batch's resolution starts before this one is dispatched: a lookup
        # depends on earlier runs only (this run's own intents are not priors), and the
        # seen index on the batches before it, resolved by now.
        self._pending = asyncio.ensure_future(asyncio.to_thread(self._resolve, seen, rows))
        await self._dispatch(previous)
        if wait:
            await self._dispatch_pending()

    async def _take_pending(self) -> list[Resolved]:
        """The batch the worker thread resolved (or is resolving), if any."""
        pending, self._pending = self._pending, None
        return [] if pending is None else await pending

    async def _dispatch(self, resolved: list[Resolved]) -> None:
        for lane, batch, priors in resolved:
            await self.dispatch(lane, batch, priors)

    async def _dispatch_pending(self) -> None:
        """Dispatch the batch the worker thread resolved (or is resolving), if any."""
        await self._dispatch(await self._take_pending())

    def _resolve(self, seen: SeenIndex, rows: list[Row]) -> list[Resolved]:
        """(in a worker thread) Identities for ``rows``, then, per workspace, the rows that
        are not repeats with what earlier runs left for them. Repeats stay in the batch
        (``dispatch`` reports them in order)."""
        with self._resolving:
            return self._resolve_locked(seen, rows)

    def _resolve_locked(self, seen: SeenIndex, rows: list[Row]) -> list[Resolved]:
        lanes = [self.lane_of(r) for r in rows] if self._scoped else None
        scopes = None if lanes is None else [lane.name for lane in lanes]
        assigned = seen.assign(rows, scopes)
        by_lane: dict[str, tuple[Lane, list[Assigned]]] = {}
        for i, a in enumerate(assigned):
            if not self.owns(a.row.line):
                continue  # a group worker: identified (occurrences stay the same), not its row
            lane = self.default if lanes is None else lanes[i]
            entry = by_lane.get(lane.name)
            if entry is None:
                entry = by_lane[lane.name] = (lane, [])
            entry[1].append(a)
        out = []
        for lane, batch in by_lane.values():
            keys = [a.key for a in batch if a.duplicate_of is None or a.send_id is None]
            out.append((lane, batch, self.store.lookup_many(lane.label, keys)))
        return out

    async def dispatch(
        self, lane: Lane, batch: list[Assigned], priors: dict[RowKey, Prior]
    ) -> None:
        """Report repeats, skip what earlier runs did, report what is in doubt, queue the
        rest (``decide``); a row to send is deferred instead while its workspace is not
        sending. ``priors``: ``lookup_many`` of the batch's keys."""
        force, retry = self.settings.force, self.settings.retry_in_doubt
        # Listed once per workspace and run (the first batch waits for it): rows for
        # campaigns Braze does not have fail here, before they can spend quota.
        known = await self.campaign_check.campaigns(lane.label, lane.client)
        # Rows to skip are gathered and emitted together (per row, emit() was ~40% of a
        # skip run's time); before any other outcome or await, so the order is unchanged.
        # A Job is built only for a row that goes to the workers.
        skips: list[Skip] = []
        for a in batch:
            if a.duplicate_of is not None and a.send_id is not None:
                if skips:
                    self._emit_skipped(lane, skips)
                    skips = []
                self.emit(duplicate(a.row, a.send_id, a.duplicate_of), a.key, lane)
                continue
            prior = priors.get(a.key)
            decision = decide(a.send_id is not None, prior, force=force, retry_in_doubt=retry)
            if decision is SKIP:
                assert prior is not None
                skips.append(
                    (a.row, a.key, prior.send_id or a.send_id, prior.run_id, prior.at, prior.ref)
                )
                continue
            if skips:
                self._emit_skipped(lane, skips)
                skips = []
            if known is not None and (code := known.verdict(a.row.campaign_id)) is not None:
                self.emit(refused(a.row, a.send_id, code), a.key, lane)
                continue
            if decision is IN_DOUBT:
                self.emit(failed_in_doubt(a.row, prior=prior), a.key, lane)
                continue
            reason = self._deferral_reason(lane)
            if reason is not None:
                self.emit(deferred(a.row, a.send_id, reason), a.key, lane)
                continue
            await lane.queue.put(Job(a.row, a.key, a.send_id))
        if skips:
            self._emit_skipped(lane, skips)

    def _emit_skipped(self, lane: Lane, skips: list[Skip]) -> None:
        """``emit`` for rows an earlier run created (``outcomes.skipped``), a batch at once."""
        self.store.record_skipped(self.run_id, lane.label, skips)  # the store first, as emit
        if self.output_error is None:
            try:
                self.sink.write_skipped(skips)
            except OutputError as exc:
                self.output_failed(exc)
        self.stats.counts[Status.SKIPPED.value] += len(skips)
        lane.stats.counts[Status.SKIPPED.value] += len(skips)

    # -- the workers -------------------------------------------------------------------
    async def work(self, lane: Lane) -> None:
        """Take the lane's jobs until the sentinel; each ends in exactly one outcome."""
        while True:
            job = await lane.queue.get()
            if job is None:
                return
            reason = self._deferral_reason(lane)
            if reason is not None:
                self.emit(deferred(job.row, job.send_id, reason), job.key, lane)
                continue
            self.emit(await self.provision(lane, job), job.key, lane)

    # -- quota windows ------------------------------------------------------------------
    async def save_quota_periodically(self) -> None:
        """Persist the quota windows for the next run and ``status`` while the run lasts."""
        while True:
            await asyncio.sleep(min(5.0, self.settings.progress_interval))
            self.save_quota()

    def save_quota(self) -> None:
        """Persist every lane's current window."""
        for lane in self.lanes.values():
            lane.save_quota(self.store)

    def exit_code(self) -> int:
        """0 all provisioned, 1 failures, 3 deferred, 4 a workspace's configuration (key
        refused, redirect, certificate, unreachable), 130/143 signals."""
        if self.stop_exit is not None:
            return self.stop_exit
        if any(lane.stop_exit == ExitCode.KEY_REFUSED for lane in self.lanes.values()):
            return ExitCode.KEY_REFUSED
        if self.stats.counts.get(Status.FAILED.value):
            return ExitCode.ROWS_FAILED
        if self.stats.counts.get(Status.DEFERRED.value):
            return ExitCode.DEFERRED
        return ExitCode.OK
