"""Measure the state store: group-committed intents, record throughput, lookups, loop lag.

Run: ``.venv/bin/python bench/bench_state.py [--keys 1000000]``. Prints one line per
figure; everything runs on temporary files and takes well under a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable without installing

from provisioner._core.models import Outcome, Status
from provisioner._state.opening import open_store
from provisioner._state.store import SqliteStateStore

WS = "bench"
COLUMNS = (("campaign_id", "3f1c2d4e-0000-4a5b-8c9d-0123456789ab"), ("send_id", "x"), ("n", "1"))


def fresh(folder: Path, name: str, *, durable: bool = True) -> SqliteStateStore:
    store = open_store(folder / f"{name}.sqlite3", durable_intents=durable)
    store.begin_run("bench-run", "bench.csv", time.time(), None, {})
    return store


async def bench_intents(folder: Path, workers: int, total: int, durable: bool) -> None:
    """``workers`` coroutines each await intents back to back, as the runner's pool does."""
    store = fresh(folder, f"intents-{workers}-{durable}", durable=durable)
    waits: list[float] = []

    async def worker(w: int) -> None:
        for i in range(w, total, workers):
            t = time.perf_counter()
            await store.intent("bench-run", WS, ("c", f"s:{i}"), str(i), i)
            waits.append(time.perf_counter() - t)

    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(workers)))
    elapsed = time.perf_counter() - start
    store.close()
    sync = "FULL  " if durable else "NORMAL"
    print(
        f"intents   sync={sync} {workers:3d} concurrent: {total / elapsed:9,.0f} intents/s,"
        f" wait mean {statistics.mean(waits) * 1e3:6.2f} ms,"
        f" p99 {sorted(waits)[int(len(waits) * 0.99)] * 1e3:6.2f} ms"
    )


def skipped_outcome(line: int) -> Outcome:
    return Outcome(line, Status.SKIPPED, COLUMNS[0][1], f"s{line}", COLUMNS,
                   created_run="bench-run", created_at=1.0)  # fmt: skip


async def bench_records(folder: Path, total: int) -> None:
    """Outcomes committed per second, and what record() costs its caller."""
    store = fresh(folder, "records")
    outcomes = [skipped_outcome(line) for line in range(total)]
    start = time.perf_counter()
    caller = 0.0
    for i in range(0, total, 1000):
        t = time.perf_counter()
        for outcome in outcomes[i : i + 1000]:
            store.record("bench-run", WS, (outcome.campaign_id or "", "s:x"), outcome)
        caller += time.perf_counter() - t
        await store.throttle()
        await asyncio.sleep(0)
    await store.flush()
    elapsed = time.perf_counter() - start
    store.close()
    conn = sqlite3.connect(folder / "records.sqlite3")
    try:
        size = conn.execute("SELECT sum(pgsize) FROM dbstat WHERE name = 'outcomes'").fetchone()[0]
    except sqlite3.OperationalError:  # a SQLite built without dbstat: the whole file
        size = (folder / "records.sqlite3").stat().st_size
    conn.close()
    print(
        f"records   {total:,} skipped outcomes: {total / elapsed:9,.0f} committed/s,"
        f" record() costs the caller {caller / total * 1e6:.2f} us each,"
        f" {size / total:.0f} bytes/outcome on disk"
    )


async def bench_loop_lag(folder: Path, total: int) -> None:
    """How late a 1 ms ticker runs while the loop produces ``total`` outcomes at the
    runner's pace (a batch of 500, then a yield): without a store (the loop's own work),
    recording them into the store, then while the writer drains what is still queued."""
    lags: list[tuple[float, float]] = []  # (when, how late)
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append((time.perf_counter(), time.perf_counter() - t - 0.001))

    def worst(start: float, end: float) -> str:
        late = sorted(lag for when, lag in lags if start <= when <= end) or [0.0]
        p99 = late[int(len(late) * 0.99)]
        return f"max {late[-1] * 1e3:5.2f} ms, p99 {p99 * 1e3:5.2f} ms ({end - start:.2f} s)"

    async def produce(record: Callable[[Outcome], None]) -> None:
        for i in range(0, total, 500):
            for line in range(i, i + 500):
                record(skipped_outcome(line))
            await asyncio.sleep(0)

    tick = asyncio.create_task(ticker())
    marks = [time.perf_counter()]
    await asyncio.sleep(0.5)
    marks.append(time.perf_counter())
    await produce(lambda outcome: None)
    store = fresh(folder, "lag")
    marks.append(time.perf_counter())
    await produce(lambda outcome: store.record("bench-run", WS, None, outcome))
    marks.append(time.perf_counter())
    await store.flush()
    marks.append(time.perf_counter())
    stop.set()
    await tick
    store.close()
    print(f"loop lag  idle loop:                                {worst(marks[0], marks[1])}")
    print(f"loop lag  producing {total:,} outcomes, no store:      {worst(marks[1], marks[2])}")
    print(f"loop lag  producing {total:,} outcomes into the store: {worst(marks[2], marks[3])}")
    print(f"loop lag  idle loop while the writer drains the rest: {worst(marks[3], marks[4])}")


def bench_lookups(folder: Path, keys: int) -> None:
    """lookup_many on a store holding ``keys`` created combinations, 1,000 keys a call."""
    store = fresh(folder, "lookups")
    seq = store._run_seq
    store.close()
    campaigns = [f"{random.getrandbits(128):032x}" for _ in range(1000)]
    t = time.perf_counter()
    conn = sqlite3.connect(folder / "lookups.sqlite3", isolation_level=None)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO created VALUES (?, ?, ?, ?, ?, 1.0)",
        ((WS, campaigns[i % 1000], f"s:send-{i}", f"send-{i}", seq) for i in range(keys)),
    )
    conn.execute("COMMIT")
    conn.close()
    populate = time.perf_counter() - t
    store = open_store(folder / "lookups.sqlite3", lock=False)
    rng = random.Random(7)
    sample = rng.sample(range(keys), min(keys, 200_000))
    hits = [(campaigns[i % 1000], f"s:send-{i}") for i in sample]
    misses = [(campaigns[i % 1000], f"s:other-{i}") for i in sample]
    for label, batch_keys in (("all done", hits), ("all new ", misses)):
        store.lookup_many(WS, batch_keys[:5000])  # warm the cache like a running skip would
        t = time.perf_counter()
        found = 0
        for i in range(0, len(batch_keys), 1000):
            found += len(store.lookup_many(WS, batch_keys[i : i + 1000]))
        elapsed = time.perf_counter() - t
        print(
            f"lookups   {label} ({found:,} found of {len(batch_keys):,}, {keys:,} in store):"
            f" {len(batch_keys) / elapsed:9,.0f} keys/s"
        )
    store.close()
    print(f"populate  {keys:,} created keys with executemany: {populate:.1f} s")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000, help="created keys for lookups")
    parser.add_argument("--records", type=int, default=200_000, help="outcomes to record")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for durable in (True, False):
            for workers in (16, 64):
                await bench_intents(folder, workers, 20_000, durable)
        await bench_records(folder, args.records)
        await bench_loop_lag(folder, 100_000)
        bench_lookups(folder, args.keys)


if __name__ == "__main__":
    asyncio.run(main())
