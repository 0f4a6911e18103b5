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
import contextlib
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from .client import BrazeClient, Reply, ReplyKind
from .config import Settings
from .errors import InDoubt, TransportError
from .identity import RowKey
from .limiter import Deferred, Pacer, QuotaBudget
from .logs import get_logger
from .manifest import Manifest
from .models import Outcome, Row, RowError, Status
from .outcomes import deferred, failed_from_error, failed_in_doubt, final_outcome, skipped
from .retry import RetryBudget, RetryPolicy, Transient
from .seen import SeenIndex
from .sinks import FileSink, OutputFolder, ResultSink
from .state import SqliteStateStore, StateStore, default_state_path, open_store
from .stats import RunStats, iso
from .validation import validate

log = get_logger(__name__)

_LOOKUP_BATCH = 512
_SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


@dataclass(frozen=True, slots=True)
class Job:
    """A valid row on its way to Braze."""

    row: Row
    key: RowKey
    send_id: str | None  # the send_id requested (the row's, or derived); None: Braze picks


@dataclass(frozen=True, slots=True)
class RunResult:
    """What a finished run returns: its id, exit code and summary document."""

    run_id: str
    exit_code: int
    summary: dict[str, object]


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

    # -- progress ----------------------------------------------------------------------
    async def report_progress(self) -> None:
        """Log a progress event every ``progress_interval`` seconds."""
        while True:
            await asyncio.sleep(self.settings.progress_interval)
            elapsed = self.stats.elapsed()
            done = self.stats.rows_done
            fraction = self.manifest.fraction_read() if self.manifest is not None else None
            eta = elapsed * (1 - fraction) / fraction if fraction else None
            log.info(
                "progress",
                rows_done=done,
                fraction_read=round(fraction, 4) if fraction is not None else None,
                eta_s=round(eta) if eta is not None else None,
                counts=dict(self.stats.counts),
                rows_per_s=round(done / elapsed, 1) if elapsed else None,
                requests=self.stats.requests,
                quota_remaining=self.budget.remaining,
                paused_until=iso(self.budget.paused_until) if self.budget.paused_until else None,
            )
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


async def run_pipeline(
    settings: Settings,
    *,
    handle_signals: bool = False,
    store: StateStore | None = None,
) -> RunResult:
    """Run the whole pipeline for ``settings`` and return its result.

    Raises ``ManifestError``/``OutputError``/``StateError`` before anything is sent when
    the manifest, the output folder or the state store cannot be used.
    """
    folder = OutputFolder(settings.out_dir)
    folder.prepare()
    manifest = Manifest(settings.manifest, settings.manifest_format)
    own_store = store is None
    with manifest:
        if store is None:
            store = open_settings_store(settings)
            if store.took_over_from is not None:
                pid, started = store.took_over_from
                log.warning(
                    "stale_lock_taken_over",
                    pid=pid,
                    started=started,
                    hint="a run died without finishing; this run resumes its work",
                )
        try:
            return await _run(settings, manifest, folder, store, handle_signals)
        finally:
            if own_store:
                store.close()


def open_settings_store(settings: Settings) -> SqliteStateStore:
    """Open (and lock) the state store the settings name, or the per-user default.

    Blocking, once per run, before any request: a busy store must stop the run early.
    """
    path = Path(settings.state_path).expanduser() if settings.state_path else default_state_path()
    return open_store(path)


async def _run(
    settings: Settings,
    manifest: Manifest,
    folder: OutputFolder,
    store: StateStore,
    handle_signals: bool,
) -> RunResult:
    run_id = new_run_id()
    sink = FileSink(folder, deferred_header=manifest.header)
    async with BrazeClient(
        settings.base_url,
        settings.api_key,
        concurrency=settings.concurrency,
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
    ) as client:
        run = Run(
            settings,
            store=store,
            sink=sink,
            client=client,
            run_id=run_id,
            manifest_name=manifest.display_name,
        )
        store.begin_run(
            run_id, manifest.display_name, run.stats.started_at, manifest.header, settings.public()
        )
        log.info(
            "run_started",
            run_id=run_id,
            manifest=manifest.display_name,
            out=str(settings.out_dir),
            concurrency=settings.concurrency,
            rate=settings.rate,
            quota_cap=settings.quota,
            workspace=run.workspace,
        )
        loop = asyncio.get_running_loop()
        if handle_signals:
            for sig, code in _SIGNAL_EXIT.items():
                loop.add_signal_handler(sig, run.request_stop, "interrupted", code)
        progress = asyncio.create_task(run.report_progress())
        workers = [asyncio.create_task(run.work()) for _ in range(settings.concurrency)]
        try:
            await run.read(manifest)
            for _ in workers:
                await run.queue.put(None)
            await asyncio.gather(*workers)
        except BaseException:
            for task in workers:
                task.cancel()
            sink.abort()
            raise
        finally:
            progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await progress
            if handle_signals:
                for sig in _SIGNAL_EXIT:
                    loop.remove_signal_handler(sig)
        run.save_quota()
        await store.flush()
        exit_code = run.exit_code()
        summary = run.stats.summary(
            run_id=run_id, manifest=manifest.display_name, exit_code=exit_code
        )
        summary["out_dir"] = str(settings.out_dir)
        summary["quota"] = _quota_summary(run.budget)
        sink.commit(summary)
        store.finish_run(run_id, time.time(), exit_code, dict(run.stats.counts), summary)
        log.info(
            "run_finished",
            run_id=run_id,
            exit_code=exit_code,
            counts=summary["counts"],
            duration_s=summary["duration_s"],
            rows_per_s=summary["rows_per_s"],
        )
        return RunResult(run_id, exit_code, summary)


def _quota_summary(budget: QuotaBudget) -> dict[str, object]:
    return {
        "limit": budget.limit,
        "remaining": budget.remaining,
        "reset_at": iso(budget.reset_at) if budget.reset_at else None,
        "spent_this_window": budget.spent,
        "cap": budget.cap,
        "deferred_until": iso(budget.deferred.resume_at)
        if budget.deferred is not None and budget.deferred.resume_at
        else None,
    }
