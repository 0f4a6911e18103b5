"""The worker pool and one run's orchestration, from open files to the run's result.

``run_pipeline`` (re-exported by ``provisioner.api``) prepares the output folder, the
metrics observer, the manifest and the state store, then ``_run`` starts the pool: one
client and lane per workspace, the reader task, a fixed pool of worker coroutines per
lane (``Run.work``), the observers and the periodic quota save; it waits for the reader
(or a worker that dies first), queues the sentinels, gathers the workers, then writes the
summary and the four output files and finishes the run in the store. ``runner.py`` holds
what the reader and the workers do; this module only starts, stops and ends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import shlex
import signal
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, cast

from provisioner._braze.client import BrazeClient
from provisioner._config.settings import Settings
from provisioner._core.logs import get_logger
from provisioner._core.times import iso
from provisioner._core.vocab import DeferReason, ExitCode
from provisioner._manifest.reader import Manifest, manifest_for
from provisioner._outputs.files import FileSink, OutputFolder
from provisioner._outputs.observe import ProgressLog, RunObserver, snapshot, watch
from provisioner._pipeline.group import check_group, make_run, worker_lease
from provisioner._pipeline.runner import new_run_id
from provisioner._pipeline.workspace_lane import Lane
from provisioner._state.interface import RunStore
from provisioner._state.opening import open_store
from provisioner._state.retention import Policy
from provisioner._state.store import SqliteStateStore, show_location, state_location
from provisioner.errors import OutputError, RunFailed, StateError

log = get_logger(__name__)

_SIGNAL_EXIT = {signal.SIGINT: ExitCode.INTERRUPTED, signal.SIGTERM: ExitCode.TERMINATED}


class RunSummary(TypedDict, total=False):
    """The summary document (``summary.json``) as a type; README's "Output files" says
    what each key means. ``total=False``: summaries of older runs may lack newer keys."""

    run_id: str
    manifest: str
    started_at: str
    finished_at: str
    duration_s: float
    rows_total: int
    counts: dict[str, int]
    requests: int
    retries: int
    http_429: int
    http_by_class: dict[str, int]
    latency_ms: dict[str, float | None]
    rows_per_s: float | None
    errors: dict[str, int]
    deferred_reasons: dict[str, int]
    exit_code: int
    out_dir: str
    rows_read: int
    manifest_read_to_end: bool
    quota: dict[str, object]
    workspaces: list[dict[str, object]]
    files: dict[str, object]


@dataclass(frozen=True, slots=True)
class RunResult:
    """What a finished run returns: its id, exit code and summary document."""

    run_id: str
    exit_code: int
    summary: RunSummary

    def raise_for_status(self, *, allow_deferred: bool = True) -> RunResult:
        """Raise ``RunFailed`` (carrying this result) unless every row was provisioned
        (exit 0) or, with ``allow_deferred``, rows only wait for the next window (exit 3);
        return the result otherwise, for chaining."""
        if self.exit_code == ExitCode.OK or (
            allow_deferred and self.exit_code == ExitCode.DEFERRED
        ):
            return self
        counts = ", ".join(f"{n} {s}" for s, n in self.counts.items() if n) or "no rows"
        raise RunFailed(
            f"run {self.run_id} ended with exit code {self.exit_code} ({counts}): see "
            f"{self.summary.get('out_dir', 'the output folder')}/summary.json",
            self,
        )

    @property
    def counts(self) -> dict[str, int]:
        """Rows by final status: created, duplicate, skipped, failed, deferred."""
        counts = self.summary.get("counts", {})
        return dict(counts) if isinstance(counts, dict) else {}

    @property
    def succeeded(self) -> bool:
        """Every row provisioned (exit code 0)."""
        return self.exit_code == ExitCode.OK

    @property
    def needs_rerun(self) -> bool:
        """Rows wait for a later run: deferred by quota (3) or interrupted (130/143)."""
        return ExitCode(self.exit_code).resumable


async def run_pipeline(
    settings: Settings,
    *,
    handle_signals: bool = False,
    store: RunStore | None = None,
    observers: Sequence[RunObserver] = (),
) -> RunResult:
    """Run the whole pipeline for ``settings`` and return its result.

    Raises ``ManifestError``/``OutputError``/``StateError`` before anything is sent when
    the manifest, the output folder or the state store cannot be used. ``OutputError`` is
    also raised at the end when the output files fail after requests were sent (disk full,
    folder removed): the run is then recorded in the store (exit code 2) and the message
    names the ``provisioner export`` command that writes its files.

    While it runs, the process's garbage collector is tuned (``_BatchGC``) and restored
    when the last run in the process ends.
    """
    folder = OutputFolder(settings.out_dir)
    folder.prepare()
    try:
        observers = [*observers, *metrics_observers(settings)]
        manifest = manifest_for(settings)
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
                with _batch_gc.during_run():
                    result = await _run(
                        settings, manifest, folder, store, handle_signals, observers
                    )
                if own_store:
                    assert isinstance(store, SqliteStateStore)
                    await _retain(store, settings)
                return result
            finally:
                if own_store:
                    store.close()
    finally:
        folder.release()  # the sink released it already, unless it was never made


async def _retain(store: SqliteStateStore, settings: Settings) -> None:
    """Prune old runs by ``[state] keep_days`` / ``keep_runs``: after the run's files are
    committed and its end is recorded, never while sending. Off the loop's thread; a
    failure is logged and the run's result stands (``provisioner prune`` tries again)."""
    policy = Policy(settings.state_keep_days, settings.state_keep_runs)
    try:
        pruned = await asyncio.to_thread(store.prune, policy)
    except StateError as exc:
        log.warning("prune_failed", error=str(exc), hint="`provisioner prune` tries again")
        return
    if pruned.runs:
        log.info(
            "runs_pruned",
            runs=len(pruned.runs),
            rows=pruned.rows,
            bytes_before=pruned.bytes_before,
            bytes_after=pruned.bytes_after,
            note=pruned.note,
        )


class _BatchGC:
    """Collect cyclic garbage less often while runs are under way.

    A run makes next to no cyclic garbage (measured: ~30 objects in 50k rows), yet at
    the default threshold the collector ran every ~130 rows, traversing the requests in
    flight and the state writer's queue each time, and now and then everything the
    imports left: ~4 us of a row's CPU at latency 0. What exists before the first run is
    frozen (never scanned) until the last one ends; the thresholds are restored then.
    """

    #: Young objects between collections during a run (Python's default is 700). A skip
    #: run measured 0.8 us a row of collections at 700 and ~0 at 50,000.
    YOUNG = 50_000

    def __init__(self) -> None:
        self.runs = 0
        self.saved: tuple[int, int, int] = gc.get_threshold()
        self.freezes = False

    @contextlib.contextmanager
    def during_run(self) -> Iterator[None]:
        """Tune the collector for the duration of one run (runs may overlap)."""
        if self.runs == 0:
            if not gc.isenabled():
                yield  # the application turned the collector off: not ours to tune
                return
            self.saved = gc.get_threshold()
            # An application that froze objects itself (before forking) keeps them so.
            self.freezes = gc.get_freeze_count() == 0
            if self.freezes:
                gc.freeze()
            # Raised, never lowered: an application's higher threshold is kept.
            gc.set_threshold(max(self.YOUNG, self.saved[0]), *self.saved[1:])
        self.runs += 1
        try:
            yield
        finally:
            self.runs -= 1
            if self.runs == 0:
                gc.set_threshold(*self.saved)
                if self.freezes:
                    gc.unfreeze()


_batch_gc = _BatchGC()


def metrics_observers(settings: Settings) -> list[RunObserver]:
    """The metrics file observer when --metrics-file is set, its path checked now: a bad
    path stops the run before any request is sent."""
    if not settings.metrics_file:
        return []
    # Imported here: prometheus_client costs ~15 ms of every start-up that writes no file.
    from provisioner._outputs.metrics import MetricsFile, check_metrics_path

    path = Path(settings.metrics_file).expanduser()
    check_metrics_path(path)
    return [MetricsFile(path, interval=min(15.0, settings.progress_interval))]


def open_settings_store(settings: Settings) -> SqliteStateStore:
    """Open (and lock) the state store the settings name, or the per-user default.

    Blocking, once per run, before any request: a busy store must stop the run early.
    """
    labels = [w.api_key.label for w in settings.workspaces]
    if settings.state_group:
        check_group(settings)
        labels = worker_lease(settings, labels)  # a group's workers share their workspaces
    return open_store(
        state_location(settings.state_path),
        workspaces=labels,
        lock_wait=settings.state_lock_wait,
    )


async def _run(
    settings: Settings,
    manifest: Manifest,
    folder: OutputFolder,
    store: RunStore,
    handle_signals: bool,
    observers: Sequence[RunObserver],
) -> RunResult:
    run_id = new_run_id()
    sink = FileSink(folder, deferred_header=manifest.header)
    async with contextlib.AsyncExitStack() as stack:
        lanes: dict[str, Lane] = {}
        for ws in settings.workspaces:
            client = await stack.enter_async_context(
                BrazeClient(
                    ws.base_url,
                    ws.api_key,
                    concurrency=ws.concurrency or settings.concurrency,
                    connect_timeout=settings.connect_timeout,
                    read_timeout=settings.read_timeout,
                    request_timeout=settings.request_timeout,
                    ca_file=settings.ca_file,
                )
            )
            lanes[ws.name] = Lane(ws, settings, client)
            lanes[ws.name].seed_quota(store)
        run = make_run(
            settings,
            store=store,
            sink=sink,
            lanes=lanes,
            default_lane=settings.default_workspace,
            run_id=run_id,
            manifest_name=manifest.display_name,
        )
        stack.callback(run.close)
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
            workspaces={name: lane.label for name, lane in lanes.items()},
        )
        loop = asyncio.get_running_loop()
        if handle_signals:
            for sig, code in _SIGNAL_EXIT.items():
                loop.add_signal_handler(sig, run.request_stop, DeferReason.INTERRUPTED, code)
        watchers = [ProgressLog(settings.progress_interval), *observers]
        background = [asyncio.create_task(watch(run, o)) for o in watchers]
        background.append(asyncio.create_task(run.save_quota_periodically()))
        workers = [
            asyncio.create_task(run.work(lane))
            for lane in lanes.values()
            for _ in range(lane.concurrency)
        ]
        reader = asyncio.create_task(run.read(manifest))
        try:
            await _unless_a_worker_fails(reader, workers)
            await _unless_a_worker_fails(asyncio.ensure_future(_end_workers(lanes)), workers)
            await asyncio.gather(*workers)
        except BaseException:
            reader.cancel()
            for task in workers:
                task.cancel()
            sink.abort()
            raise
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            if handle_signals:
                for sig in _SIGNAL_EXIT:
                    loop.remove_signal_handler(sig)
        run.save_quota()
        await store.flush()
        exit_code = int(run.exit_code())  # a plain int in logs, summary and result
        summary = run.stats.summary(
            run_id=run_id, manifest=manifest.display_name, exit_code=exit_code
        )
        summary["out_dir"] = str(settings.out_dir)
        # Rows past a cut-short reading are in no output file: the 9 am reader must see it.
        summary["rows_read"] = run.rows_read
        summary["manifest_read_to_end"] = run.read_to_end
        summary["quota"] = run.default.summary()
        summary["workspaces"] = [lane.summary() for lane in lanes.values()]
        for lane in lanes.values():
            if lane.deferred_rows and lane.budget.deferred is not None:
                log.warning(
                    "rows_deferred",
                    workspace=lane.label,
                    rows=lane.deferred_rows,
                    next_window_at=iso(lane.budget.deferred.resume_at)
                    if lane.budget.deferred.resume_at
                    else None,
                    windows_needed=lane.windows_needed(),
                )
        if run.output_error is None:
            try:
                sink.commit(summary)
            except OutputError as exc:
                run.output_error = exc
        else:
            sink.abort()
        if run.output_error is not None:
            exit_code = summary["exit_code"] = ExitCode.USAGE
        final = snapshot(run, exit_code=exit_code)
        for observer in observers:
            try:
                observer.close(final)
            except Exception as exc:  # the outputs are written; report, do not fail the run
                log.warning(
                    "observer_failed",
                    observer=type(observer).__name__,
                    error=f"{type(exc).__name__}: {exc}",
                )
        store.finish_run(run_id, time.time(), exit_code, dict(run.stats.counts), summary)
        log.info(
            "run_finished",
            run_id=run_id,
            exit_code=exit_code,
            counts=summary["counts"],
            duration_s=summary["duration_s"],
            rows_per_s=summary["rows_per_s"],
        )
        if run.output_error is not None:
            raise OutputError(_nothing_lost(run.output_error, run_id, settings, summary))
        return RunResult(run_id, exit_code, cast(RunSummary, summary))


async def _end_workers(lanes: Mapping[str, Lane]) -> None:
    """Queue each worker's sentinel (after the reader is done)."""
    for lane in lanes.values():
        for _ in range(lane.concurrency):
            await lane.queue.put(None)


async def _unless_a_worker_fails(
    task: asyncio.Future[None], workers: Sequence[asyncio.Task[None]]
) -> None:
    """Wait for ``task`` (the reader, or the sentinels' queueing); re-raise the error of
    a worker that fails before it is done.

    A worker that fails (say the state store refused a write) leaves its queue full:
    without this the reader, or the sentinel for a worker, would wait for room in it
    forever; all workers fail at once when a PostgreSQL lease was lost, often after the
    reader is done. ``task`` is cancelled if a worker fails first."""
    pending: set[asyncio.Future[None]] = {task, *workers}
    try:
        while not task.done():
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for finished in done:
                if finished is not task:
                    finished.result()  # raises for a failed worker; None at its sentinel
    finally:
        if not task.done():
            task.cancel()
    await task


def _nothing_lost(
    exc: OutputError, run_id: str, settings: Settings, summary: dict[str, object]
) -> str:
    """The one-line message for output files that failed after requests were sent: the
    store has every outcome, so it says which run to export, and how."""
    out = shlex.quote(str(settings.out_dir))
    state = (
        f" --state {shlex.quote(show_location(settings.state_path))}" if settings.state_path else ""
    )
    counts = summary.get("counts")
    done = ", ".join(f"{n} {s}" for s, n in counts.items() if n) if isinstance(counts, dict) else ""
    return (
        f"{exc}. Nothing is lost: every outcome of run {run_id} ({done or 'no rows'}) is in "
        f"the state store; once the folder can be written, `provisioner export --run {run_id} "
        f"--out {out}{state}` writes its four files, and running the same command again "
        f"sends only the rows still to do"
    )
