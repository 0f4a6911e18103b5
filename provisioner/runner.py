"""The pipeline: manifest -> validation -> state lookup -> workers -> outputs and state.

One reader task streams the manifest, validates rows, finds duplicates and rows already
done, and feeds a bounded queue; a fixed pool of ``concurrency`` worker coroutines (cheaper
per request than a task per row, see engineering-notes) sends them through the pacer and
the quota budget; every row's outcome goes to the sink (the four output files) and to the
state store. Memory does not grow with the manifest: the queue is bounded and nothing
keeps rows once they are written.

When the run must stop early (key refused, quota deferred, SIGTERM/SIGINT), workers stop
taking rows and the reader drains the rest of the manifest into ``deferred.csv``, so every
row still ends in exactly one output file.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .client import BrazeClient, Reply, ReplyKind
from .config import Settings
from .errors import InDoubt, TransportError
from .identity import RowKey
from .limiter import Deferred, Pacer, QuotaBudget
from .logs import get_logger
from .manifest import Manifest
from .models import Outcome, Row, RowError, Status
from .observe import RunObserver, Snapshot
from .outcomes import deferred, failed_from_error, failed_in_doubt, final_outcome, skipped
from .retry import RetryBudget, RetryPolicy, Transient
from .seen import SeenIndex
from .sinks import ResultSink
from .state import StateStore
from .stats import RunStats
from .validation import validate

log = get_logger(__name__)

_LOOKUP_BATCH = 512


@dataclass(frozen=True, slots=True)
class Job:
    """A valid row on its way to Braze."""

    row: Row
    key: RowKey
    send_id: str | None  # the send_id requested (the row's, or derived); None: Braze picks


def new_run_id() -> str:
    """A sortable, unique run id such as ``20261126T061500Z-3f9a1c``."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


class Run:
    """One run of the pipeline. Use ``run_pipeline`` rather than this class directly."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: StateStore,
        sink: ResultSink,
        client: BrazeClient,
        run_id: str,
        manifest_name: str,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self.store = store
        self.sink = sink
        self.client = client
        self.run_id = run_id
        self.manifest_name = manifest_name
        self.workspace = settings.api_key.label
        self.stats = RunStats()
        self.pacer = Pacer(settings.rate)
        self.budget = QuotaBudget(
            default_limit=settings.default_quota,
            default_window=settings.default_window,
            cap=settings.quota,
            max_wait=settings.max_wait,
        )
        self.policy = RetryPolicy(
            attempts=settings.retry_attempts,
            max_time=settings.retry_max_time,
            backoff_base=settings.retry_backoff_base,
            backoff_cap=settings.retry_backoff_cap,
        )
        self.retry_budget = RetryBudget()
        self._sleep = sleep
        self.queue: asyncio.Queue[Job | None] = asyncio.Queue(maxsize=settings.concurrency * 4)
        self.stop_reason: str | None = None
        self.stop_exit: int | None = None
        self.drain_abandoned = False
        self.manifest: Manifest | None = None
        self.rows_read = 0
        self._spent_recorded = 0

    # -- stopping ----------------------------------------------------------------------
    def request_stop(self, reason: str, exit_code: int | None = None) -> None:
        """Stop taking rows; the rest is deferred with ``reason``."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self.stop_exit = exit_code
            log.warning("run_stopping", reason=reason, run_id=self.run_id)
        elif reason == "interrupted" and self.stop_reason == "interrupted":
            # A second signal: stop draining the manifest; in-flight requests still finish.
            self.drain_abandoned = True
            log.warning("drain_abandoned", run_id=self.run_id)

    def _deferral_reason(self) -> str | None:
        if self.stop_reason is not None:
            return self.stop_reason
        d = self.budget.deferred
        return d.reason if d is not None else None

    # -- outcomes ----------------------------------------------------------------------
    def emit(self, outcome: Outcome, key: RowKey | None) -> None:
        """Send one final outcome to the outputs, the state store and the counters."""
        self.sink.write(outcome)
        self.store.record(self.run_id, self.workspace, key, outcome)
        self.stats.counts[outcome.status.value] += 1
        if outcome.status is Status.FAILED:
            self.stats.errors[outcome.error or "unknown"] += 1
            log.warning(
                "row_failed",
                line=outcome.line,
                campaign_id=outcome.campaign_id,
                error=outcome.error,
                message=outcome.message,
                http_status=outcome.http_status,
            )
        elif outcome.status is Status.DEFERRED:
            self.stats.deferred_reasons[outcome.reason or "unknown"] += 1

    # -- the reader --------------------------------------------------------------------
    async def read(self, manifest: Manifest) -> None:
        """Stream the manifest into outcomes (invalid, duplicate) and jobs (the queue)."""
        self.manifest = manifest
        seen = SeenIndex(self.settings.derive_send_ids)
        try:
            rows: list[Row] = []
            for n, item in enumerate(manifest, 1):
                self.rows_read = n
                if self.drain_abandoned:
                    break
                checked = item if isinstance(item, RowError) else validate(item)
                if isinstance(checked, RowError):
                    self.emit(failed_from_error(checked), None)
                else:
                    rows.append(checked)
                if len(rows) >= _LOOKUP_BATCH:
                    await self._identify(seen, rows)
                    rows = []
                elif n % 256 == 0:
                    # Long stretches of invalid rows: let workers and timers run, and keep
                    # the state writer's queue bounded.
                    await self.store.throttle()
                    await asyncio.sleep(0)
            if rows:
                await self._identify(seen, rows)
        finally:
            seen.close()

    async def _identify(self, seen: SeenIndex, rows: list[Row]) -> None:
        """Give a batch of valid rows their identities; report repeats, dispatch the rest."""
        jobs: list[Job] = []
        for a in seen.assign(rows):
            if a.duplicate_of is not None and a.send_id is not None:
                self.emit(_duplicate(a.row, a.send_id, a.duplicate_of), a.key)
            else:
                jobs.append(Job(a.row, a.key, a.send_id))
        if jobs:
            await self.dispatch(jobs)

    async def dispatch(self, batch: list[Job]) -> None:
        """Skip what earlier runs did, report what is in doubt, queue the rest."""
        # Backpressure: a run that only skips can outpace the writer thread; keep its
        # queue (and so memory) bounded.
        await self.store.throttle()
        priors = self.store.lookup_many(self.workspace, [job.key for job in batch])
        for job in batch:
            prior = priors.get(job.key)
            if prior is not None and not self.settings.force:
                if prior.kind == "created":
                    self.emit(skipped(job.row, job.send_id, prior), job.key)
                    continue
                if job.send_id is None and not self.settings.retry_in_doubt:
                    self.emit(failed_in_doubt(job.row, prior=prior), job.key)
                    continue
            reason = self._deferral_reason()
            if reason is not None:
                self.emit(deferred(job.row, job.send_id, reason), job.key)
                continue
            await self.queue.put(job)

    # -- the workers -------------------------------------------------------------------
    async def work(self) -> None:
        """Take jobs until the sentinel; each ends in exactly one outcome."""
        while True:
            job = await self.queue.get()
            if job is None:
                return
            reason = self._deferral_reason()
            if reason is not None:
                self.emit(deferred(job.row, job.send_id, reason), job.key)
                continue
            self.emit(await self.provision(job), job.key)

    async def provision(self, job: Job) -> Outcome:
        """Create one send id, with the retries, pauses and doubts the policy allows."""
        attempts = [0]
        # Only a row without a send_id must have its intent on disk before the request
        # leaves (it could otherwise be created twice); a known send_id is safe to resend.
        await self.store.intent(
            self.run_id,
            self.workspace,
            job.key,
            job.send_id,
            job.row.line,
            wait=job.send_id is None,
        )
        try:
            try:
                reply = await self.attempt(job, attempts)
            except Transient as first:
                reply = await self._retry(job, attempts, first)
        except Deferred as exc:
            return deferred(job.row, job.send_id, exc.reason)
        except Transient as exc:
            return final_outcome(job.row, job.send_id, attempts[0], None, exc)
        except InDoubt as exc:
            return failed_in_doubt(job.row, attempts=attempts[0], detail=str(exc))
        if reply.kind is ReplyKind.KEY_REFUSED:
            self.request_stop("key_refused", 4)
            await self.budget.defer("key_refused")
            log.error(
                "key_refused",
                http_status=reply.status,
                message=reply.message,
                hint=_KEY_HINTS.get(reply.status, ""),
            )
            return deferred(job.row, job.send_id, "key_refused")
        return final_outcome(job.row, job.send_id, attempts[0], reply, None)

    async def _retry(self, job: Job, attempts: list[int], first: Transient) -> Reply:
        pending: Transient | None = first
        async for attempt in self.policy.retrying(self.retry_budget, sleep=self._sleep):
            with attempt:
                if pending is not None:
                    exc, pending = pending, None
                    raise exc
                self.stats.retries += 1
                return await self.attempt(job, attempts)
        raise AssertionError("unreachable: tenacity re-raises the last failure")

    async def attempt(self, job: Job, attempts: list[int]) -> Reply:
        """Send one request for the job; 429s pause and resend here, not as retries."""
        while True:
            await self.budget.acquire()
            await self.pacer.wait()
            if self.stop_reason == "key_refused":
                await self.budget.cancel()
                raise Deferred("key_refused", None)
            attempts[0] += 1
            self.stats.requests += 1
            self.retry_budget.note_request()
            try:
                reply = await self.client.create(job.row.campaign_id, job.send_id)
            except TransportError as exc:
                if isinstance(exc, InDoubt):
                    await self.budget.settle_unknown()
                    if job.send_id is None:
                        raise  # resending could create a second id
                else:
                    await self.budget.cancel()
                raise Transient(error=exc) from exc
            self.stats.note_status(reply.status)
            self.stats.latency.add(reply.latency_ms)
            limited = reply.kind is ReplyKind.RATE_LIMITED
            await self.budget.observe(
                reply.rate_limit,
                created=reply.kind in (ReplyKind.CREATED, ReplyKind.QUEUED),
                rate_limited=limited,
                retry_after=reply.retry_after,
            )
            if limited:
                self.stats.http_429 += 1
                continue
            if reply.kind is ReplyKind.SERVER_ERROR:
                raise Transient(reply=reply)
            return reply

    # -- observers ---------------------------------------------------------------------
    def snapshot(self, *, exit_code: int | None = None) -> Snapshot:
        """The run's state now, for observers (progress log, display, metrics file)."""
        elapsed = self.stats.elapsed()
        done = self.stats.rows_done
        read = self.manifest.fraction_read() if self.manifest is not None else None
        # The reader runs ahead of the workers (a whole small file is read at once), so the
        # share of the file read is scaled by the share of the rows read that are done.
        fraction = None if read is None else read * done / max(1, self.rows_read)
        b = self.budget
        return Snapshot(
            run_id=self.run_id,
            manifest=self.manifest_name,
            workspace=self.workspace,
            started_at=self.stats.started_at,
            elapsed_s=elapsed,
            rows_done=done,
            counts={s.value: self.stats.counts.get(s.value, 0) for s in Status},
            requests=self.stats.requests,
            retries=self.stats.retries,
            http_429=self.stats.http_429,
            http_by_class=dict(self.stats.http_by_class),
            rows_per_s=round(done / elapsed, 1) if elapsed > 0 else None,
            fraction_read=fraction,
            eta_s=elapsed * (1 - fraction) / fraction if fraction else None,
            quota_limit=b.limit,
            quota_remaining=b.remaining,
            quota_reset_at=b.reset_at,
            paused_until=b.paused_until,
            finished=exit_code is not None,
            exit_code=exit_code,
            errors=dict(self.stats.errors),
        )

    async def watch(self, observer: RunObserver) -> None:
        """Feed one observer a snapshot every ``observer.interval`` seconds."""
        while True:
            await asyncio.sleep(observer.interval)
            try:
                observer.update(self.snapshot())
            except Exception as exc:  # a display or metrics failure must not stop the run
                log.warning(
                    "observer_failed",
                    observer=type(observer).__name__,
                    error=f"{type(exc).__name__}: {exc}",
                )

    async def save_quota_periodically(self) -> None:
        """Persist the quota window for ``provisioner status`` while the run lasts."""
        while True:
            await asyncio.sleep(self.settings.progress_interval)
            self.save_quota()

    def save_quota(self) -> None:
        """Persist the current window's figures for ``provisioner status``."""
        b = self.budget
        if b.known and b.reset_at is not None and b.limit is not None and b.remaining is not None:
            delta = b.spent - self._spent_recorded
            self.store.record_quota(self.workspace, b.reset_at, b.limit, b.remaining, max(0, delta))
            self._spent_recorded = b.spent

    def exit_code(self) -> int:
        """0 all provisioned, 1 failures, 3 deferred, 4 key refused, 130/143 signals."""
        if self.stop_exit is not None:
            return self.stop_exit
        if self.stats.counts.get(Status.FAILED.value):
            return 1
        if self.stats.counts.get(Status.DEFERRED.value):
            return 3
        return 0


_KEY_HINTS = {
    401: "the key is unknown or missing: check BRAZE_API_KEY and the instance's base URL",
    403: "the key lacks the sends.id.create permission, or the plan does not allow it",
    404: "the key is unknown to this instance: check the base URL (rest.iad-0N, fra-0N ...)",
}


def _duplicate(row: Row, send_id: str, first: int) -> Outcome:
    return Outcome(
        line=row.line,
        status=Status.DUPLICATE,
        campaign_id=row.campaign_id,
        send_id=send_id,
        columns=row.columns,
        duplicate_of=first,
    )
