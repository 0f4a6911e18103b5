"""The three clients the provisioner is compared with, written small and plainly.

All three send the same request the provisioner sends (orjson body, one aiohttp session,
read the whole answer and take the send_id from it), so the differences measured are the
concurrency pattern and, for the provisioner, the work it does besides sending:
validation, identities, state, outputs. None of them retries, validates or records.

Run as a script, ``baselines.py gather URL KEY MANIFEST CONCURRENCY`` runs (c) and prints
its tally as JSON: the memory scenario measures it in a child process of its own.
"""

from __future__ import annotations

import asyncio
import csv
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

import aiohttp
import orjson

ENDPOINT = "/sends/id/create"


@dataclass(slots=True)
class Tally:
    """What a baseline did: rows taken, created, refused by the quota, anything else."""

    rows: int = 0
    created: int = 0
    rate_limited: int = 0
    other: int = 0
    not_sent: int = 0  # (c) after its first 429: the rows it gives up on
    errors: int = 0  # connection errors and timeouts: counted, never raised
    first_error: str = ""  # the first one's type, to say what went wrong


def read_rows(manifest: Path, limit: int | None = None) -> Iterator[tuple[str, str]]:
    """(campaign_id, send_id) pairs from a two-column CSV manifest, streamed."""
    with manifest.open(newline="") as fh:
        reader = csv.reader(fh)
        next(reader)  # the header
        for row in islice(reader, limit):
            yield row[0], row[1]


def _session(key: str, concurrency: int) -> aiohttp.ClientSession:
    # Pool sized to the concurrency (the default of 100 would hide nothing here, but a
    # real client should match them); explicit timeouts, as a batch tool needs.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency, limit_per_host=0),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=30),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )


async def _post(
    session: aiohttp.ClientSession, url: str, campaign_id: str, send_id: str, tally: Tally
) -> int:
    """One create request; the body is always read so the connection goes back to the pool.

    A transport error is counted, not raised: an exception escaping ``gather`` would make
    asyncio cancel (c)'s hundreds of thousands of waiting tasks, which takes minutes
    (cancelled waiters make ``Semaphore`` scan its queue), and the figure would be lost.
    """
    body = orjson.dumps({"campaign_id": campaign_id, "send_id": send_id})
    tally.rows += 1
    try:
        async with session.post(url, data=body, allow_redirects=False) as resp:
            raw = await resp.read()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        tally.errors += 1
        tally.first_error = tally.first_error or type(exc).__name__
        return 0
    if status == 201 and orjson.loads(raw).get("send_id"):
        tally.created += 1
    elif status == 429:
        tally.rate_limited += 1
    else:
        tally.other += 1
    return status


async def sequential(base_url: str, key: str, manifest: Path, limit: int | None = None) -> Tally:
    """(a) One request at a time over one session: how hand-written scripts and the
    common Braze client libraries work. Round-trip bound: its rate is 1 / latency."""
    tally = Tally()
    url = base_url + ENDPOINT
    async with _session(key, 1) as session:
        for campaign_id, send_id in read_rows(manifest, limit):
            await _post(session, url, campaign_id, send_id, tally)
    return tally


async def worker_pool(base_url: str, key: str, manifest: Path, concurrency: int) -> Tally:
    """(b) A fixed pool of ``concurrency`` worker coroutines sharing one row iterator and
    one session: nothing but sending. The practical limit of aiohttp on this machine."""
    tally = Tally()
    url = base_url + ENDPOINT
    rows = read_rows(manifest)

    async def worker() -> None:
        # next() on the shared iterator never awaits, so workers cannot interleave in it.
        for campaign_id, send_id in rows:
            await _post(session, url, campaign_id, send_id, tally)

    async with _session(key, concurrency) as session:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tally


async def gather_all(base_url: str, key: str, manifest: Path, concurrency: int) -> Tally:
    """(c) The naive pattern: read every row, make one task per row up front, and
    ``asyncio.gather`` them behind a semaphore. Its memory grows with the manifest.

    After the first 429 the remaining tasks give up without sending (as the provisioner
    defers), so a quota-capped run is quick while its peak memory is still that of every
    task existing at once.
    """
    tally = Tally()
    url = base_url + ENDPOINT
    rows = list(read_rows(manifest))
    semaphore = asyncio.Semaphore(concurrency)
    spent = False

    async def one(campaign_id: str, send_id: str) -> None:
        nonlocal spent
        async with semaphore:
            if spent:
                tally.not_sent += 1
                return
            if await _post(session, url, campaign_id, send_id, tally) == 429:
                spent = True

    async with _session(key, concurrency) as session:
        await asyncio.gather(*[one(campaign_id, send_id) for campaign_id, send_id in rows])
    return tally


def main(argv: list[str]) -> int:
    """``gather URL KEY MANIFEST CONCURRENCY``: run (c), print its tally and time as JSON."""
    if len(argv) != 5 or argv[0] != "gather":
        print("usage: baselines.py gather URL KEY MANIFEST CONCURRENCY", file=sys.stderr)
        return 2
    _, url, key, manifest, concurrency = argv
    start = time.perf_counter()
    tally = asyncio.run(gather_all(url, key, Path(manifest), int(concurrency)))
    doc = {**asdict(tally), "seconds": time.perf_counter() - start}
    print(orjson.dumps(doc).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
