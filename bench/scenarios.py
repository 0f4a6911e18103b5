"""Scenarios 1, 2 and 3 of issue 6 (4 is in ``memory_scenario.py``, 5 in
``skip_scenario.py``) and uvloop's effect, each returning table lines.

Every measured run gets a fresh sandbox process: the sandbox keeps every creation in its
ledger and its set of combinations, so a client measured later would otherwise meet a
server holding more state than one measured earlier.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import baselines
from support import (
    KEY,
    Measure,
    SandboxProcess,
    measured,
    run_loop,
    write_manifest,
)

from provisioner._config.settings import build_settings
from provisioner.api import RunResult, run_pipeline

CONCURRENCY = 64
LATENCY_S = 0.05
QUOTA = 50
WINDOW_S = 2


@dataclass(frozen=True, slots=True)
class Sizes:
    """Row counts of one mode: full (the issue's sizes) or quick (under a minute)."""

    capacity: int
    sequential: int  # (a) is round-trip bound: a sample gives its rate
    latency: int
    latency_sequential: int
    quota_windows: float  # rows = this many windows' worth of quota
    memory: tuple[int, int]
    gather_memory: tuple[int, ...]
    skip: int
    repeats: int  # scenario 1 keeps the best of this many runs of each client
    memory_repeats: int  # scenario 4 runs each size this many times
    skip_scale: tuple[int, ...] = (1_000_000, 5_000_000)  # scenario 5, skip_scenario.py
    defer_store: int = 1_000_000  # scenario 5d: a run deferring this many rows


FULL = Sizes(100_000, 10_000, 10_000, 100, 4.5, (1_000_000, 5_000_000),
             (100_000, 250_000, 500_000), 1_000_000, 3, 2)  # fmt: skip
QUICK = Sizes(20_000, 2_000, 2_000, 20, 2.5, (100_000, 300_000),
              (50_000, 150_000), 100_000, 1, 1, (100_000, 300_000), 100_000)  # fmt: skip


@dataclass(slots=True)
class Line:
    """One row of the printed table, plus the details printed under it."""

    scenario: str
    provisioner: str
    sequential: str = "—"
    pool: str = "—"
    gather: str = "—"
    ratio: str = ""
    target: str = ""
    met: bool | None = None  # None: reported, no target
    notes: list[str] = field(default_factory=list)


def rate(m: Measure) -> str:
    """A rows-per-second cell."""
    return f"{m.rows_per_s:,.0f} rows/s" if m.rows_per_s >= 100 else f"{m.rows_per_s:.1f} rows/s"


def _provision(
    url: str, manifest: Path, work: Path, name: str, **cli: object
) -> Callable[[], Coroutine[Any, Any, RunResult]]:
    """A full provisioner run in this process (state store and output files on)."""
    options: dict[str, object] = {
        "base_url": url,
        "rate": 1_000_000.0,
        "concurrency": CONCURRENCY,
        "state_path": str(work / f"{name}.sqlite3"),
        "log_level": "error",
        **cli,
    }
    settings = build_settings(
        manifest=str(manifest),
        out_dir=work / f"out-{name}",
        cli=options,
        env={"BRAZE_API_KEY": KEY},
    )
    return lambda: run_pipeline(settings)


#: Given the sandbox's URL, a zero-argument function returning the run's coroutine.
Factory = Callable[[str], Callable[[], Coroutine[Any, Any, object]]]


def _client(who: str, manifest: Path, work: Path, tag: str) -> Factory:
    """The factory of one client: the provisioner or baseline (a), (b) or (c)."""

    def make(url: str) -> Callable[[], Coroutine[Any, Any, object]]:
        if who == "provisioner":
            return _provision(url, manifest, work, tag)
        if who == "(a)":
            return lambda: baselines.sequential(url, KEY, manifest)
        if who == "(b)":
            return lambda: baselines.worker_pool(url, KEY, manifest, CONCURRENCY)
        return lambda: baselines.gather_all(url, KEY, manifest, CONCURRENCY)

    return make


def _timed(rows: int, make: Factory, *, uvloop: bool = False, latency_ms: int = 0) -> Measure:
    """Run one client against a fresh sandbox and check it created every row."""
    gc.collect()  # garbage of the previous run must not be collected on this one's clock
    box: list[object] = []
    with SandboxProcess(latency_ms=latency_ms) as sb:
        factory = make(sb.url)
        m = measured(sb, rows, lambda: box.append(run_loop(factory(), uvloop=uvloop)))
    result = box[0]
    if isinstance(result, RunResult):
        created = result.counts.get("created", 0)
    else:
        assert isinstance(result, baselines.Tally)
        created = result.created
    if created != rows:
        # A run that did not create every row is not comparable: say so loudly.
        m.warnings.append(f"created {created:,} of {rows:,} rows")
    return m


def _capacity_runs(
    sizes: Sizes, work: Path, runs: list[tuple[str, bool]]
) -> dict[tuple[str, bool], Measure]:
    """Scenario 1's runs: the best of ``sizes.repeats`` runs of each (client, uvloop)
    pair. Each repeat runs every pair once, so that a busy spell of the (shared) machine
    spreads over all clients and both loops instead of falling on one of them."""
    best: dict[tuple[str, bool], Measure] = {}
    for rep in range(sizes.repeats):
        for who, uvloop in runs:
            tag = f"cap-{rep}-{'uv' if uvloop else 'aio'}-{who.strip('()')}"
            manifest = write_manifest(work / f"{tag}.csv", sizes.capacity, tag)
            m = _timed(sizes.capacity, _client(who, manifest, work, tag), uvloop=uvloop)
            manifest.unlink()
            key = (who, uvloop)
            if key not in best or m.rows_per_s > best[key].rows_per_s:
                best[key] = m
    return best


def capacity(sizes: Sizes, work: Path, *, uvloop_installed: bool) -> tuple[list[Line], Measure]:
    """Scenario 1: latency 0, quota not binding: the client's own cost per row decides.

    With uvloop importable, a second line: the provisioner and (b) again on uvloop, each
    one's gain over its own figure on asyncio's loop, and their ratio on uvloop. Also
    returns (b)'s measure on asyncio, for scenario 1o.
    """
    runs = [("provisioner", False), ("(b)", False), ("(c)", False)]
    if uvloop_installed:
        runs += [("provisioner", True), ("(b)", True)]
    best = _capacity_runs(sizes, work, runs)
    manifest = write_manifest(work / "cap-seq.csv", sizes.sequential, "cap-seq")
    seq = _timed(sizes.sequential, _client("(a)", manifest, work, "cap-seq"))
    prov, pool, gath = best["provisioner", False], best["(b)", False], best["(c)", False]
    notes = [f"{who} on asyncio: {m.describe()}" for (who, uv), m in best.items() if not uv]
    notes.append(f"(a) on {sizes.sequential:,} rows: {seq.describe()}")
    ratio = prov.rows_per_s / pool.rows_per_s
    lines = [
        Line(
            f"1. Capacity, {sizes.capacity:,} rows, latency 0, concurrency {CONCURRENCY}",
            rate(prov),
            rate(seq),
            rate(pool),
            rate(gath),
            f"{ratio:.2f} × (b); {prov.rows_per_s / seq.rows_per_s:.1f} × (a); "
            f"{prov.rows_per_s / gath.rows_per_s:.2f} × (c)",
            "≥ 0.80 × (b)",
            ratio >= 0.80 and not prov.warnings,
            notes,
        )
    ]
    if not uvloop_installed:
        return lines, pool

    def gain(who: str) -> str:
        change = best[who, True].rows_per_s / best[who, False].rows_per_s - 1
        return f"{rate(best[who, True])} ({change:+.0%} vs asyncio)"

    uv_prov, uv_pool = best["provisioner", True], best["(b)", True]
    lines.append(
        Line(
            "1u. Capacity as 1, on uvloop",
            gain("provisioner"),
            pool=gain("(b)"),
            ratio=f"{uv_prov.rows_per_s / uv_pool.rows_per_s:.2f} × (b) on uvloop",
            target="report only",
            notes=[f"{who} on uvloop: {m.describe()}" for (who, uv), m in best.items() if uv],
        )
    )
    return lines, pool


def latency_bound(sizes: Sizes, work: Path) -> Line:
    """Scenario 2: 50 ms per request, concurrency 64: the ideal is 64 / 0.05 = 1,280/s."""
    ideal = CONCURRENCY / LATENCY_S
    latency_ms = int(LATENCY_S * 1000)
    figures: dict[str, Measure] = {}
    for who in ("provisioner", "(b)", "(c)", "(a)"):
        # (a) does 20 rows/s here: a sample of rows gives its rate.
        n = sizes.latency_sequential if who == "(a)" else sizes.latency
        tag = f"lat-{who.strip('()')}"
        manifest = write_manifest(work / f"{tag}.csv", n, tag)
        figures[who] = _timed(n, _client(who, manifest, work, tag), latency_ms=latency_ms)
    prov = figures["provisioner"]
    notes = [f"{who}: {m.describe()}" for who, m in figures.items()]
    return Line(
        f"2. Latency-bound, {sizes.latency:,} rows, 50 ms, concurrency {CONCURRENCY}",
        rate(prov),
        rate(figures["(a)"]),
        rate(figures["(b)"]),
        rate(figures["(c)"]),
        f"{prov.rows_per_s / ideal:.2f} × ideal {ideal:,.0f}/s",
        f"≥ 0.95 × {ideal:,.0f} = {0.95 * ideal:,.0f} rows/s",
        prov.rows_per_s >= 0.95 * ideal and not prov.warnings,
        notes,
    )


def quota_precision(sizes: Sizes, work: Path) -> Line:
    """Scenario 3: a quota of 50 per 2-second window over several windows.

    Creations are bucketed by the sandbox's own timestamps (``floor(at / 2)``). The first
    and last windows are partial (the run starts mid-window, the rows run out), so the
    "exactly the quota" check applies to the windows in between; the cap and the 429
    count apply to all.
    """
    n = int(sizes.quota_windows * QUOTA)
    manifest = write_manifest(work / "quota.csv", n, "quota")
    notes: list[str] = []
    with SandboxProcess(quota=str(QUOTA), window=WINDOW_S) as sb:
        make = _provision(sb.url, manifest, work, "quota", max_wait=5.0)
        m = measured(sb, n, lambda: run_loop(make()))
        ledger = sb.ledger()
    at = sorted(entry["at"] for entry in ledger["created"])
    per_window = Counter(int(t // WINDOW_S) for t in at)
    counts = [per_window[w] for w in sorted(per_window)]
    inner = counts[1:-1]
    http_429 = int(ledger["requests"]["by_status"].get("429", 0))
    # How soon after each reset the first creation of the window came (precision in time).
    starts = [min(t for t in at if int(t // WINDOW_S) == w) - w * WINDOW_S for w in per_window]
    notes.append(
        f"{len(at)} of {n} rows created in {m.seconds:.1f} s; first creation after each "
        f"reset: {', '.join(f'{s * 1000:.0f} ms' for s in starts[1:])}"
    )
    with SandboxProcess(quota=str(QUOTA), window=WINDOW_S) as sb:
        tally = run_loop(baselines.worker_pool(sb.url, KEY, manifest, CONCURRENCY))
    met = bool(inner) and all(c == QUOTA for c in inner) and max(counts) <= QUOTA
    met = met and http_429 == 0 and len(at) == n
    return Line(
        f"3. Quota precision, {n} rows, quota {QUOTA} per {WINDOW_S} s window",
        f"per window {'/'.join(map(str, counts))}; max {max(counts)}; {http_429} × 429",
        pool=f"{tally.created} created, {tally.rate_limited} × 429 (no retry)",
        ratio=f"max/quota {max(counts) / QUOTA:.2f}",
        target=f"{QUOTA} per full window, 0 × 429",
        met=met,
        notes=notes,
    )
