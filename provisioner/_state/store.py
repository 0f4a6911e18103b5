"""Durable state (SQLite, WAL): created combinations, intents, outcomes, runs, quota windows.

This module is the SQLite implementation of the seams (``interface.py``: ``RunStore`` for a
run, ``StoreReader`` for the read-only commands) and the concurrency; the SQL (format,
migrations, statements, the read side) is in ``schema.py``, how a batch of queued
operations becomes one transaction in ``batch.py``, the run lock in ``lock.py``.

Threads and the event loop:

* One writer thread owns the write connection. ``record`` / ``record_quota`` append an
  operation to a deque and return; ``intent`` / ``flush`` also append a waiter and await
  it. The thread takes everything queued (up to ``_BATCH`` operations) into ONE
  transaction, commits, then settles the waiters with ``loop.call_soon_threadsafe``:
  concurrent intents share a commit (group commit) and the loop never does disk I/O.
* Reads use a second connection; WAL lets them run while the writer commits. They see
  committed data only: await ``flush()`` first to read your own writes.
* A failed write makes the store fail-stop: the batch is rolled back and every later
  call (``record``, ``intent``, ``flush``, ``finish_run``, ``close``) raises StateError,
  so the runner stops sending requests it could not record.

Durability: WAL with ``synchronous=NORMAL`` survives kill -9. A batch holding an intent
commits with ``synchronous=FULL`` (the WAL is fsynced, and with it every earlier
commit), so no request leaves before its intent would survive a power cut too; group
commit keeps that affordable (figures: ``bench/bench_state.py``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from provisioner._core.identity import RowKey
from provisioner._core.models import BUFFER_BYTES, Outcome, Skip, Status
from provisioner._state import blocks, codec, retention, schema
from provisioner._state.batch import (
    CREATED,
    GROUP,
    INTENTS,
    OUTCOMES,
    QUOTA,
    RUNS,
    STOP,
    WAIT,
    Op,
    commit,
    settle,
    sort_batch,
)
from provisioner._state.interface import RunStore, StateStore, StoreReader
from provisioner._state.location import (
    default_state_path,
    scrub_settings,
    show_location,
    state_location,
)
from provisioner._state.lock import Holder, RunLock
from provisioner._state.retention import Policy, Pruned
from provisioner._state.schema import IN_DOUBT, Prior, QuotaWindow, RunRecord
from provisioner._state.sqlite_reader import SqliteReader
from provisioner.errors import StateError

__all__ = [
    "IN_DOUBT", "Prior", "QuotaWindow", "RowKey", "RunRecord", "RunStore", "SqliteStateStore",
    "StateStore", "StoreReader", "default_state_path", "scrub_settings",
    "show_location", "state_location",
]  # fmt: skip


def _dumps(value: object) -> str:
    """JSON text for the runs table's json columns (non-JSON values become strings)."""
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


_BATCH = 4096  # operations per transaction: bounds one commit's latency and memory
_HARD_CAP = 500_000  # queued operations at which record() waits for the writer
_HIGH_WATER = 4096  # throttle() waits above this many queued operations (~3 MB)
# ... or above this many bytes of encoded rows (wide rows: 1.8 MB each at 150,000 columns);
# record() waits past _HARD_BYTES. A checkpoint (a waiter nobody awaits) is queued every
# _CHECKPOINT_BYTES: once the writer settles it, the bytes queued before it are committed.
_QUEUE_BYTES = BUFFER_BYTES
_HARD_BYTES = 4 * BUFFER_BYTES
_CHECKPOINT_BYTES = BUFFER_BYTES // 4
_ROW_BYTES = 100  # what an outcome costs queued besides its columns' text (a tuple, ints)
_QUOTA_KEEP_S = 30 * 86400  # older windows are history nobody reads: keep a month
# Records nobody waits for do not wake the writer one by one: waking it per record (an
# Event.set, then a thread switch and a GIL hand-over) was ~5% of the loop thread's time
# at 8k rows/s. It wakes for a waiter, at _WAKE_AT queued operations, or by itself
# every _IDLE_POLL_S, so an unwaited record reaches the disk within that time.
_WAKE_AT = 1024
_IDLE_POLL_S = 0.01


class SqliteStateStore(SqliteReader):
    """The SQLite :class:`RunStore` and :class:`StoreReader`: the reads of SqliteReader plus
    the writer thread.

    Create it with :func:`open_store`. Async methods must be awaited on an event loop;
    the writer settles each waiter on the loop it was created on.
    """

    def __init__(
        self,
        path: Path,
        read: sqlite3.Connection,
        write: sqlite3.Connection | None,
        run_lock: RunLock | None,
        *,
        durable_intents: bool = True,
    ) -> None:
        super().__init__(path, read)
        #: (pid, start) of a crashed run whose lock this store took over, for the log.
        self.took_over_from: Holder | None = run_lock.took_over_from if run_lock else None
        self._write = write
        self._run_lock = run_lock
        self._durable_intents = durable_intents
        self._full_sync = False
        self._ops: deque[Op] = deque()
        self._bytes = 0  # bytes queued since the last checkpoint
        self._checkpoints: deque[tuple[concurrent.futures.Future[None], int]] = deque()
        self._checkpointed = 0  # bytes queued before the checkpoints not yet settled
        self._wake = threading.Event()
        self._error: str | None = None
        self._error_seen = False
        self._writer: threading.Thread | None = None
        if write is not None:
            self._writer = threading.Thread(
                target=self._writer_main, name="provisioner-state-writer", daemon=True
            )
            self._writer.start()

    def begin_run(
        self,
        run_id: str,
        manifest: str,
        started_at: float,
        deferred_header: tuple[str, ...] | None,
        settings: Mapping[str, object],
    ) -> None:
        """Register this store's one run; blocks until committed. Never pass the API key
        in ``settings`` (names with key/secret/token/password are dropped anyway)."""
        self._check_writable()
        if self._run_id is not None:
            raise RuntimeError(f"begin_run: this store already records run {self._run_id!r}")
        with self._reading() as conn:
            if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone():
                raise StateError(f"run id {run_id!r} is already in state store {self.path}")
        header = None if deferred_header is None else _dumps(list(deferred_header))
        settings_json = _dumps(scrub_settings(settings))
        params = (run_id, manifest, os.getpid(), started_at, header, settings_json)
        self._call(
            (RUNS, schema.SQL_BEGIN_RUN, params),
            (QUOTA, schema.SQL_PRUNE_QUOTA, (started_at - _QUOTA_KEEP_S,)),
        )
        self._run_seq = self._seq_of(run_id)
        self._run_id = run_id
        if self._run_lock is not None:
            self._run_lock.name_run(run_id)  # a run waiting for the lock says whom for

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
        """Record that the request for ``key`` is about to leave; returns once committed.

        ``wait=False`` is for rows whose send_id is known: resending them is safe, so the
        intent is only for ``status`` and need not be durable before the request leaves.
        It is queued like a record (in a group, so it does not force a FULL-sync commit).
        """
        seq = self._current(run_id)
        params = (workspace, key[0], key[1], seq, time.time(), send_id, line)
        if not wait:
            self._push((GROUP, "", ((INTENTS, schema.SQL_INTENT, params),)))
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._push((INTENTS, schema.SQL_INTENT, params), (WAIT, "", future))
        await self._settled(future)

    def record(self, run_id: str, workspace: str, key: RowKey | None, outcome: Outcome) -> None:
        """Enqueue a row's outcome and its effect on created/intents; does not wait.

        created: the combination is stored (created_at: outcome.created_at, else now) and
        any intent for the key is resolved. failed "in_doubt": the intent is kept, as
        in_doubt. Other failed/deferred: an intent of THIS run is resolved (an older run's
        intent stays: this run did not learn that request's fate). duplicate/skipped never
        touch intents (a duplicate shares its key with the first copy's request).
        """
        seq = self._current(run_id)
        status = outcome.status
        if key is not None and key[0] != outcome.campaign_id:
            raise ValueError(f"key {key!r} does not match campaign_id {outcome.campaign_id!r}")
        if status is Status.CREATED and (key is None or outcome.send_id is None):
            raise ValueError(f"line {outcome.line}: a created outcome needs a key and a send_id")
        row = codec.encode_outcome(seq, workspace, key and key[1], outcome, self._seqs)
        op: Op = (OUTCOMES, schema.SQL_OUTCOME, row)
        if key is not None:
            ident = (workspace, key[0], key[1])
            if status is Status.CREATED:
                at = time.time() if outcome.created_at is None else outcome.created_at
                # The outcome keeps its creation's time too: a later run's skipped rows
                # refer to this outcome (blocks.py) and show that time.
                op = (OUTCOMES, schema.SQL_OUTCOME, (*row[:-1], at))
                if self._compact:
                    params = (*ident, outcome.send_id, seq, at, outcome.line)
                    created: Op = (CREATED, schema.SQL_CREATED_LINE, params)
                else:
                    created = (CREATED, schema.SQL_CREATED, (*ident, outcome.send_id, seq, at))
                op = (GROUP, "", (op, created, (INTENTS, schema.SQL_SETTLE, ident)))
            elif status is Status.FAILED and outcome.error == IN_DOUBT:
                doubt = (*ident, seq, time.time(), outcome.send_id, outcome.line)
                op = (GROUP, "", (op, (INTENTS, schema.SQL_DOUBT, doubt)))
            elif status is Status.FAILED or status is Status.DEFERRED:
                op = (GROUP, "", (op, (INTENTS, schema.SQL_SETTLE_OWN, (*ident, seq))))
        self._ops.append(op)
        columns = row[codec.COLUMNS_INDEX]
        self._queued(_ROW_BYTES + len(columns) if isinstance(columns, str | bytes) else _ROW_BYTES)

    def record_skipped(self, run_id: str, workspace: str, skips: Sequence[Skip]) -> None:
        """Enqueue the outcomes of rows an earlier run created: what ``record`` queues for
        each one's ``outcomes.skipped`` Outcome (one outcomes row, no created or intent
        change), in one call for a batch. Does not wait."""
        seq = self._current(run_id)
        # Rows equal to their creation's outcome are references, queued as a few blocks
        # (blocks.py); the others are stored in full, one operation per row as record()
        # queues them (the writer's batch size and throttle() count operations).
        refs, plain = blocks.references(seq, skips)
        rows = codec.encode_skipped(seq, workspace, plain, self._seqs)
        ops: list[Op] = [(OUTCOMES, schema.SQL_SKIPPED, row) for row in rows]
        ops.extend((OUTCOMES, blocks.SQL_BLOCK, p) for p in blocks.skip_blocks(refs))
        self._ops.extend(ops)
        self._queued(_ROW_BYTES * len(ops) + codec.columns_bytes(rows, codec.SKIPPED_COLUMNS_INDEX))

    def _queued(self, size: int) -> None:
        """After records of ``size`` bytes were queued: wake the writer at _WAKE_AT
        operations, and past _HARD_CAP operations or _HARD_BYTES wait for it (a safety net
        for memory; throttle() avoids reaching it)."""
        ops = self._ops
        self._bytes += size
        if self._bytes >= _CHECKPOINT_BYTES:
            checkpoint: concurrent.futures.Future[None] = concurrent.futures.Future()
            ops.append((WAIT, "", checkpoint))
            self._checkpoints.append((checkpoint, self._bytes))
            self._checkpointed += self._bytes
            self._bytes = 0
        if len(ops) >= _WAKE_AT and not self._wake.is_set():
            self._wake.set()
        if len(ops) > _HARD_CAP:
            while len(ops) > _HARD_CAP // 2 and self._error is None:
                time.sleep(0.001)
        if self._checkpointed > _HARD_BYTES:
            self._wake.set()
            while self.queued_bytes > _HARD_BYTES // 2 and self._error is None:
                # A failed writer settles it with its StateError: the loop ends on _error.
                with contextlib.suppress(concurrent.futures.TimeoutError, StateError):
                    self._checkpoints[0][0].result(timeout=0.1)

    @property
    def queued_bytes(self) -> int:
        """The approximate bytes of the records queued for the writer, not yet committed."""
        checkpoints = self._checkpoints
        while checkpoints and checkpoints[0][0].done():
            self._checkpointed -= checkpoints.popleft()[1]
        return self._checkpointed + self._bytes

    def record_quota(
        self, workspace: str, reset_at: float, limit: int, remaining: int, spent_delta: int
    ) -> None:
        """Enqueue a quota observation: keeps the lowest remaining, adds spent_delta."""
        self._check_writable()
        params = (workspace, reset_at, limit, remaining, spent_delta)
        self._push((QUOTA, schema.SQL_QUOTA, params))

    async def flush(self) -> None:
        """Return once everything enqueued so far is committed (no-op when read-only)."""
        if self._writer is None:
            return
        self._check_writable()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._push((WAIT, "", future))
        await self._settled(future)

    async def throttle(self) -> None:
        """When the writer lags (the queue holds over ``_HIGH_WATER`` operations), wait
        until it is down to half; call it once per batch of records.

        The same for bytes: above ``_QUEUE_BYTES`` of queued rows (wide rows), until
        half. Not a flush: waiting for an empty queue would leave the writer idle while the
        reader refills it. Polled, since the writer needs no extra work to allow it."""
        if len(self._ops) <= _HIGH_WATER and self.queued_bytes <= _QUEUE_BYTES:
            return
        while len(self._ops) > _HIGH_WATER // 2 or self.queued_bytes > _QUEUE_BYTES // 2:
            if not self._wake.is_set():
                self._wake.set()  # the writer may be in its idle poll
            self._check_writable()  # a writer that failed will never drain the queue
            await asyncio.sleep(0.002)

    @property
    def pending(self) -> int:
        """Operations queued for the writer and not yet taken into a transaction."""
        return len(self._ops)

    def finish_run(
        self,
        run_id: str,
        finished_at: float,
        exit_code: int,
        counts: Mapping[str, int],
        summary: Mapping[str, object],
    ) -> None:
        """Commit the run's end after everything enqueued before it; blocks until done."""
        seq = self._current(run_id)
        counts_json, summary_json = _dumps(dict(counts)), _dumps(dict(summary))
        self._call(
            (RUNS, schema.SQL_FINISH_RUN, (finished_at, exit_code, counts_json, summary_json, seq))
        )

    def prune(self, policy: Policy, *, dry_run: bool = False, **options: Any) -> Pruned:
        """Prune old runs by ``policy`` (``retention.prune``, which takes ``options``).
        This ends the store's writing (the writer thread stops): call it last."""
        if self._run_lock is None or self._write is None:
            raise RuntimeError("pruning needs the run lock: open the store with lock=True")
        if self._writer is not None:
            self._push((STOP, "", None))
            self._writer.join()
            self._writer = None
        self._check_failed()
        target = retention.SqliteTarget(self._write, self.path)
        try:
            return retention.prune(
                target, policy, own_seq=self._run_seq, dry_run=dry_run, **options
            )
        except sqlite3.Error as exc:
            raise schema.describe(self.path, exc) from None

    def size_bytes(self) -> int:
        """The store's size on disk (the file and its write-ahead log)."""
        return retention.file_bytes(self.path)

    def close(self) -> None:
        """Commit what is queued, stop the writer, close the files, release the lock.

        Safe to call twice. Raises StateError if the writer failed and no call said so."""
        if self._closed:
            return
        try:
            if self._writer is not None:
                self._push((STOP, "", None))
                self._closed = True  # after the push: nothing can be queued behind STOP
                self._writer.join()
        finally:
            self._closed = True
            for conn in (self._read, self._write):
                if conn is not None:
                    with contextlib.suppress(sqlite3.Error):
                        conn.close()
            if self._run_lock is not None:
                self._run_lock.release()
        if self._error is not None and not self._error_seen:
            self._error_seen = True
            raise StateError(self._error)

    # -- the caller's side of the queue

    def _check_writable(self) -> None:
        if self._closed:
            raise RuntimeError("the state store is closed")
        if self._writer is None:
            raise RuntimeError("the state store was opened read-only (lock=False)")
        self._check_failed()

    def _check_failed(self) -> None:
        if self._error is not None:
            self._error_seen = True
            raise StateError(self._error)

    def _current(self, run_id: str) -> int:
        self._check_writable()
        if self._run_seq is None or run_id != self._run_id:
            raise RuntimeError(f"run {run_id!r} is not this store's run: call begin_run first")
        return self._run_seq

    def _push(self, *ops: Op) -> None:
        self._ops.extend(ops)
        urgent = ops[-1][0] >= WAIT and ops[-1][0] != GROUP  # a waiter or the stop
        if (urgent or len(self._ops) >= _WAKE_AT) and not self._wake.is_set():
            self._wake.set()

    def _call(self, *ops: Op) -> None:
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._push(*ops, (WAIT, "", future))
        try:
            future.result()
        except StateError:
            self._error_seen = True
            raise

    async def _settled(self, future: asyncio.Future[None]) -> None:
        try:
            await future
        except StateError:
            self._error_seen = True
            raise

    # -- the writer thread

    def _writer_main(self) -> None:
        ops = self._ops
        while True:
            self._wake.wait(_IDLE_POLL_S)
            self._wake.clear()  # cleared before draining, so no wake-up is ever lost
            while ops:
                batch: list[Op] = []
                with contextlib.suppress(IndexError):
                    for _ in range(_BATCH):
                        batch.append(ops.popleft())
                if self._apply(batch):
                    return

    def _apply(self, batch: list[Op]) -> bool:
        sorted_ = sort_batch(batch)
        if self._error is None and any(sorted_.tables):
            conn = self._write
            assert conn is not None  # the writer thread exists only with a write connection
            durable = sorted_.durable and self._durable_intents
            try:
                if durable != self._full_sync:
                    conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
                    self._full_sync = durable
                commit(conn, sorted_.tables, compact_rows=self._compact)
            except Exception as exc:  # surfaced to every waiter and every later call
                detail = " ".join(str(exc).split()) or type(exc).__name__
                self._error = (
                    f"state store {self.path}: a write failed ({detail}); the run stopped so"
                    " that nothing is sent unrecorded: check the disk, then run again"
                )
        settle(sorted_.waiters, self._error)
        return sorted_.stop
