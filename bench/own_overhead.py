"""Scenario 1o (report only): what the provisioner itself costs per row, without HTTP.

The HTTP call is replaced by an instant in-process 201 (one loop turn, a real body and
real rate-limit headers through the real classifier), so what remains is the pipeline:
reading, validation, identities, the quota budget, pacer and breaker, retries' wrapper,
outcomes, the four output files and the state store. Set against (b)'s whole cost per
request in scenario 1, it says how much of the gap to (b) is the pipeline's own work and
how far it is from the 0.80 target: the provisioner's cost per row is roughly (b)'s plus
this, so 0.80 × (b) leaves the pipeline a quarter of (b)'s cost.

The replacement is a monkeypatch of ``BrazeClient.create`` for the duration of one run:
the product has no seam for a fake client (the tests use the sandbox over sockets), and
this figure is a diagnostic, not a scenario of the issue.
"""

from __future__ import annotations

import asyncio
import resource
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
from scenarios import CONCURRENCY, Line, Sizes
from stores import NullStore
from support import KEY, Measure, run_loop, write_manifest

from provisioner._braze import client
from provisioner._config.settings import build_settings
from provisioner.api import RunResult, run_pipeline

_HEADERS = {
    "X-RateLimit-Limit": "1000000000",
    "X-RateLimit-Remaining": "999999999",
    "X-RateLimit-Reset": str(int(time.time()) + 86_400),
}


@contextmanager
def instant_client() -> Iterator[None]:
    """Every ``BrazeClient.create`` answers 201 at once (after one loop turn)."""
    original = client.BrazeClient.create

    async def create(
        self: client.BrazeClient, campaign_id: str, send_id: str | None
    ) -> client.Reply:
        await asyncio.sleep(0)  # a real answer arrives on a later loop turn
        body = orjson.dumps({"message": "success", "send_id": send_id or f"gen-{campaign_id}"})
        kind, new_send_id, message = client.classify(201, body)
        return client.Reply(
            kind=kind,
            status=201,
            send_id=new_send_id,
            message=message,
            rate_limit=client.parse_rate_limit(_HEADERS),  # type: ignore[arg-type]
            retry_after=None,
            latency_ms=0.0,
        )

    client.BrazeClient.create = create  # type: ignore[method-assign]
    try:
        yield
    finally:
        client.BrazeClient.create = original  # type: ignore[method-assign]


def _thread_cpu() -> float:
    return time.thread_time()


def _measured(
    rows: int, manifest: Path, work: Path, tag: str, *, null_store: bool
) -> tuple[Measure, float]:
    """One in-process run with the instant client: its Measure and the main thread's CPU."""
    settings = build_settings(
        manifest=str(manifest),
        out_dir=work / f"out-{tag}",
        # The sandbox is never contacted; the URL only has to pass the loopback rule.
        cli={
            "base_url": "http://127.0.0.1:9",
            "rate": 1_000_000.0,
            "concurrency": CONCURRENCY,
            "state_path": str(work / f"{tag}.sqlite3"),
            "log_level": "error",
        },
        env={"BRAZE_API_KEY": KEY},
    )
    box: list[RunResult] = []
    main0 = _thread_cpu()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    with instant_client():
        box.append(run_loop(run_pipeline(settings, store=NullStore() if null_store else None)))
    seconds = time.perf_counter() - start
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    used = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    measure = Measure(rows, seconds, used, 0.0, used)
    if box[0].counts.get("created", 0) != rows:
        measure.warnings.append(f"created {box[0].counts.get('created', 0):,} of {rows:,}")
    return measure, _thread_cpu() - main0


def own_overhead(sizes: Sizes, work: Path, pool: Measure) -> Line:
    """Scenario 1o: the pipeline's CPU per row with and without the state store, against
    (b)'s CPU per request (``pool``, from scenario 1)."""
    assert threading.current_thread() is threading.main_thread()
    rows = sizes.capacity
    manifest = write_manifest(work / "own.csv", rows, "own")
    full, full_main = _measured(rows, manifest, work, "own-store", null_store=False)
    bare, _ = _measured(rows, manifest, work, "own-null", null_store=True)
    manifest.unlink()
    us = 1e6 / rows
    pool_us = pool.client_cpu * 1e6 / pool.rows
    return Line(
        f"1o. Own overhead, {rows:,} rows, HTTP replaced by an instant reply",
        f"{full.client_cpu * us:.0f} us CPU/row ({bare.client_cpu * us:.0f} without the store)",
        pool=f"{pool_us:.0f} us CPU/request",
        ratio=f"{full.client_cpu * us / pool_us:.2f} × (b)'s whole request",
        target="report only",
        notes=[
            f"with state and outputs: {full.describe()}; main thread "
            f"{full_main * us:.0f} us/row, state writer thread the rest",
            f"with a null store: {bare.describe()}",
        ],
    )
