"""Hostile inputs stay within bounds: blank lines give the event loop its turn; wide rows
are buffered by bytes (the feed, the lanes' queues, the store writer's queue)."""

from __future__ import annotations

import asyncio
import gzip
import os
import threading
from pathlib import Path

import pytest

from provisioner._core.models import BUFFER_BYTES, Outcome, RawRow, Row, Status, row_bytes
from provisioner._manifest import feed as feed_module
from provisioner._manifest.feed import feed_for
from provisioner._manifest.reader import Manifest
from provisioner._manifest.records import IDLE_AFTER_BLANKS


async def takes_until_the_row(path: Path) -> tuple[int, int]:
    """(take calls, loop ticks seen by another task) until the one real row arrives."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    calls = 0
    with Manifest(str(path), None) as manifest:
        feed = feed_for(manifest)
        while True:
            calls += 1
            chunk, _more = await feed.take(256)
            if chunk:
                assert isinstance(chunk[0], RawRow)
                break
            await asyncio.sleep(0)  # what the runner does between chunks
    task.cancel()
    return calls, ticks


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
async def test_blank_lines_give_the_loop_its_turn(tmp_path: Path, fmt: str) -> None:
    """Runs of blank lines end a take early (no record, more=True), so other tasks run."""
    blanks = 5 * IDLE_AFTER_BLANKS
    path = tmp_path / f"m.{fmt}.gz"
    head = b"campaign_id,send_id\n" if fmt == "csv" else b""
    row = b"c1,s1\n" if fmt == "csv" else b'{"campaign_id": "c1"}\n'
    path.write_bytes(gzip.compress(head + b"\n" * blanks + row))
    calls, ticks = await takes_until_the_row(path)
    assert calls >= 5
    assert ticks >= 4


@pytest.mark.slow
async def test_millions_of_blank_lines_never_hold_the_loop(tmp_path: Path) -> None:
    """A .gz of 20 million blank lines: the loop turns at least every 4,096 of them."""
    blanks = 20_000_000
    path = tmp_path / "m.csv.gz"
    path.write_bytes(gzip.compress(b"campaign_id,send_id\n" + b"\n" * blanks + b"c1,s1\n"))
    calls, ticks = await takes_until_the_row(path)
    assert calls >= blanks // IDLE_AFTER_BLANKS
    assert ticks >= blanks // IDLE_AFTER_BLANKS - 1


# --- wide rows: every buffer is bounded by bytes as well as rows ------------------------

WIDE_COLUMNS = 5_000  # a row of them is ~500 KB for the budgets (COLUMN_BYTES a column)


def wide_csv(rows: int) -> bytes:
    header = "campaign_id,send_id," + ",".join(f"c{i}" for i in range(WIDE_COLUMNS - 2))
    tail = "," * (WIDE_COLUMNS - 3)
    lines = [header, *(f"camp,s{i},{tail}" for i in range(rows))]
    return ("\n".join(lines) + "\n").encode()


async def test_a_chunk_of_wide_rows_holds_the_byte_budget_not_256_rows(tmp_path: Path) -> None:
    """The feed's chunk ends once its rows hold BUFFER_BYTES: ~9 rows of 5,000 columns."""
    path = tmp_path / "wide.csv"
    path.write_bytes(wide_csv(40))
    with Manifest(str(path), None) as manifest:
        feed = feed_for(manifest)
        chunk, more = await feed.take(256)
    per_row = row_bytes(chunk[0].columns)
    assert more
    assert len(chunk) == -(-BUFFER_BYTES // per_row)  # the row that reaches it is the last
    assert BUFFER_BYTES <= feed.taken_bytes < BUFFER_BYTES + 2 * per_row


async def test_narrow_rows_still_come_256_at_a_time(tmp_path: Path) -> None:
    """The byte budget does not shrink the chunks of ordinary rows."""
    path = tmp_path / "narrow.csv"
    path.write_bytes(b"campaign_id,send_id\n" + b"".join(b"c,s%d\n" % i for i in range(600)))
    with Manifest(str(path), None) as manifest:
        chunk, more = await feed_for(manifest).take(256)
    assert (len(chunk), more) == (256, True)


async def test_the_pipe_readers_queue_is_bounded_by_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading a pipe, the thread stops queueing once the queue holds its byte budget
    (plus the one row that crossed it), long before 4,096 records."""
    budget = 2 << 20
    monkeypatch.setattr(feed_module, "_QUEUE_BYTES", budget)
    read_fd, write_fd = os.pipe()
    data = wide_csv(60)

    def write() -> None:
        os.write(write_fd, data)
        os.close(write_fd)

    writer = threading.Thread(target=write)
    writer.start()
    with os.fdopen(read_fd, "rb") as pipe, Manifest("-", "csv", stdin=pipe) as manifest:
        feed = feed_for(manifest)
        assert feed.can_wait
        assert isinstance(feed, feed_module.ThreadFeed)
        queued = -1
        while feed._put_bytes != queued:  # until the reader thread has stopped queueing
            queued = feed._put_bytes
            await asyncio.sleep(0.05)
        per_row = row_bytes(RawRow(0, tuple((f"c{i}", "") for i in range(WIDE_COLUMNS))).columns)
        assert budget <= queued < budget + 2 * per_row
        rows = 0
        while True:
            chunk, _more = await feed.take(256)
            if not chunk:
                break
            rows += len(chunk)
        feed.close()
    writer.join()
    assert rows == 60


def wide_job_row(i: int) -> Row:
    columns = (("campaign_id", "c"), ("send_id", f"s{i}"), ("note", "x" * 1_000_000))
    return Row(i, "c", f"s{i}", columns)


async def test_a_lanes_queue_is_full_at_its_byte_budget() -> None:
    """A lane's queue takes 1 MB rows until they hold BUFFER_BYTES (4 of them), not 64;
    one row always fits, however large."""
    from provisioner._pipeline.workspace_lane import Job, JobQueue

    queue = JobQueue(maxsize=64)
    puts = 0
    while not queue.full():
        queue.put_nowait(Job(wide_job_row(puts), ("c", f"s{puts}"), f"s{puts}"))
        puts += 1
    assert puts == -(-BUFFER_BYTES // row_bytes(wide_job_row(0).columns))
    while not queue.empty():
        queue.get_nowait()
    assert queue.bytes == 0
    huge = JobQueue(maxsize=64, max_bytes=10)
    huge.put_nowait(Job(wide_job_row(0), ("c", "s0"), "s0"))
    assert huge.full()


async def test_the_store_writers_queue_is_throttled_by_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten 1 MB outcomes are far fewer than the writer's 4,096 operations, but past
    BUFFER_BYTES: throttle() waits for the writer until half of it is left."""
    from provisioner._state import batch
    from provisioner._state import store as state
    from provisioner._state.opening import open_store

    release = threading.Event()
    real_commit = batch.commit

    def stalled_commit(*args: object, **kw: object) -> None:
        release.wait(30)
        real_commit(*args, **kw)  # type: ignore[arg-type]

    # store.py calls the commit it imported from batch.py.

    monkeypatch.setattr(state, "commit", stalled_commit)
    store = open_store(tmp_path / "state.sqlite3")
    try:
        release.set()  # begin_run commits synchronously
        store.begin_run("run-1", "m.csv", 1000.0, ("campaign_id", "send_id", "note"), {})
        release.clear()
        for i in range(10):
            row = wide_job_row(i)
            outcome = Outcome(i, Status.FAILED, "c", row.send_id, row.columns, error="e")
            store.record("run-1", "ws", ("c", f"s{i}"), outcome)
        assert store.queued_bytes > BUFFER_BYTES
        throttle = asyncio.ensure_future(store.throttle())
        await asyncio.sleep(0.2)
        assert not throttle.done()  # the writer is stalled: the reader must wait
        release.set()
        await throttle
        assert store.queued_bytes <= BUFFER_BYTES // 2
        await store.flush()
        assert store.queued_bytes == 0
    finally:
        release.set()
        store.close()


def test_validate_counts_wide_rows_in_batches_bounded_by_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`provisioner validate` looks rows up in batches of 512 or BUFFER_BYTES, whichever
    comes first: ~9 rows of 5,000 columns, not all 40 (50 such rows of 150,000 columns
    peaked at 576 MiB, 76 MiB bounded)."""
    from provisioner._config.settings import build_settings
    from provisioner._pipeline import validate as validate_module

    batches: list[int] = []
    real_count = validate_module._count

    def counting(report: object, batch: list[Row], *args: object) -> None:
        batches.append(len(batch))
        real_count(report, batch, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(validate_module, "_count", counting)
    path = tmp_path / "wide.csv"
    path.write_bytes(wide_csv(40))
    settings = build_settings(
        manifest=str(path),
        out_dir=".",
        cli={"state_path": str(tmp_path / "state.sqlite3"), "campaign_check": False},
        env={"BRAZE_API_KEY": "k"},
    )
    report = validate_module.forecast(settings)
    assert report.rows == 40
    assert sum(batches) == 40
    per_row = row_bytes(RawRow(0, tuple((f"c{i}", "") for i in range(WIDE_COLUMNS))).columns)
    assert max(batches) == -(-BUFFER_BYTES // per_row)
