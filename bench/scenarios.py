"""The five scenarios of issue 6 (and uvloop's effect), each returning table lines.

Every measured run gets a fresh sandbox process: the sandbox's ledger grows with each
creation and its garbage collector slows down with it, so a client measured later
would otherwise meet a slower server than one measured earlier.
"""

from __future__ import annotations

import gc
import sys
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import baselines
import bench_run
import orjson
from support import (
    KEY,
    ROOT,
    Measure,
    SandboxProcess,
    child_env,
    measured,
    run_child,
    run_loop,
    tail,
    write_manifest,
)

from provisioner.api import RunResult, run_pipeline
from provisioner.config import build_settings

CONCURRENCY = 64
LATENCY_S = 0.05
QUOTA = 50
WINDOW_S = 2
MEMORY_QUOTA = 1000


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


FULL = Sizes(100_000, 10_000, 10_000, 100, 4.5, (1_000_000, 5_000_000),
             (100_000, 250_000, 500_000), 1_000_000, 2)  # fmt: skip
QUICK = Sizes(20_000, 2_000, 2_000, 40, 2.5, (100_000, 300_000),
              (50_000, 150_000), 100_000, 1)  # fmt: skip


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
    sizes: Sizes, work: Path, clients: tuple[str, ...], *, uvloop: bool
) -> tuple[dict[str, Measure], list[str]]:
    """Scenario 1's runs: the best of ``sizes.repeats`` runs of each client, interleaved
    so that a slow spell of the machine does not fall on one client only."""
    loop = "uvloop" if uvloop else "asyncio"
    best: dict[str, Measure] = {}
    for rep in range(sizes.repeats):
        for who in clients:
            tag = f"cap-{loop}-{rep}-{who.strip('()')}"
            manifest = write_manifest(work / f"{tag}.csv", sizes.capacity, tag)
            m = _timed(sizes.capacity, _client(who, manifest, work, tag), uvloop=uvloop)
            manifest.unlink()
            if who not in best or m.rows_per_s > best[who].rows_per_s:
                best[who] = m
    notes = [f"{who} on {loop}: {m.describe()}" for who, m in best.items()]
    return best, notes


def capacity(sizes: Sizes, work: Path) -> tuple[Line, dict[str, Measure]]:
    """Scenario 1: latency 0, quota not binding: the client's own cost per row decides.

    Returns the line and the figures (the uvloop line compares itself with them).
    """
    best, notes = _capacity_runs(sizes, work, ("provisioner", "(b)", "(c)"), uvloop=False)
    manifest = write_manifest(work / "cap-seq.csv", sizes.sequential, "cap-seq")
    seq = _timed(sizes.sequential, _client("(a)", manifest, work, "cap-seq"))
    notes.append(f"(a) on {sizes.sequential:,} rows: {seq.describe()}")
    prov, pool, gath = best["provisioner"], best["(b)"], best["(c)"]
    ratio = prov.rows_per_s / pool.rows_per_s
    line = Line(
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
    return line, best


def capacity_uvloop(sizes: Sizes, work: Path, on_asyncio: dict[str, Measure]) -> Line:
    """Scenario 1 again on uvloop, for the provisioner and (b): each one's gain over its
    own figure on asyncio's loop, and their ratio on uvloop."""
    best, notes = _capacity_runs(sizes, work, ("provisioner", "(b)"), uvloop=True)
    prov, pool = best["provisioner"], best["(b)"]

    def gain(who: str) -> str:
        return f" ({best[who].rows_per_s / on_asyncio[who].rows_per_s - 1:+.0%} vs asyncio)"

    return Line(
        "1u. Capacity as 1, on uvloop",
        rate(prov) + gain("provisioner"),
        pool=rate(pool) + gain("(b)"),
        ratio=f"{prov.rows_per_s / pool.rows_per_s:.2f} × (b) on uvloop",
        target="report only",
        notes=notes,
    )


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


def _provisioner_rss(url: str, rows: int, work: Path) -> tuple[float, str]:
    """Peak RSS (MB) of ``provisioner run`` over a generated manifest, in a child process
    (so the peak is its own), and a note on what it did."""
    tag = f"mem{rows}"
    manifest = write_manifest(work / f"{tag}.csv", rows, tag)
    args = [sys.executable, "-m", "provisioner", "run", str(manifest), "--out",
            str(work / f"out-{tag}"), "--base-url", url, "--quota", str(MEMORY_QUOTA),
            "--max-wait", "0", "--rate", "1000000", "--concurrency", str(CONCURRENCY),
            "--state", str(work / f"{tag}.sqlite3"), "--progress", "never",
            "--log-format", "json", "--log-level", "warning"]  # fmt: skip
    stderr = work / f"{tag}.stderr"
    # A generous bound: ~25 s per million rows measured; a stuck run must not hang the bench.
    child = run_child(args, env=child_env(), stderr_path=stderr, timeout=60 + rows / 5_000)
    manifest.unlink()  # 100 MB at 5M rows: do not keep it while the next one is written
    if child.exit_code != 3:  # 3: rows deferred by the cap, as intended
        why = f"exit {child.exit_code}: {tail(stderr)}"
        return child.peak_rss_mb, f"WARNING: provisioner {rows:,} rows: {why}"
    summary = orjson.loads((work / f"out-{tag}" / "summary.json").read_bytes())
    counts = summary["counts"]
    note = (
        f"provisioner {rows:,} rows: exit {child.exit_code}, {counts.get('created', 0):,} created, "
        f"{counts.get('deferred', 0):,} deferred in {child.seconds:.1f} s "
        f"({rows / child.seconds:,.0f} rows/s), peak RSS {child.peak_rss_mb:.0f} MB"
    )
    return child.peak_rss_mb, note


def _gather_rss(rows: int, work: Path) -> tuple[float, str]:
    """Peak RSS (MB) of baseline (c) over ``rows`` rows in a child process, against a
    sandbox whose quota is the provisioner's cap (it stops sending at the first 429)."""
    tag = f"gmem{rows}"
    manifest = write_manifest(work / f"{tag}.csv", rows, tag)
    with SandboxProcess(quota=str(MEMORY_QUOTA)) as sb:
        args = [sys.executable, str(ROOT / "bench" / "baselines.py"), "gather", sb.url, KEY,
                str(manifest), str(CONCURRENCY)]  # fmt: skip
        stderr = work / f"{tag}.stderr"
        child = run_child(args, env=child_env(), stderr_path=stderr, timeout=60 + rows / 5_000)
    manifest.unlink()
    if child.exit_code != 0:
        why = f"exit {child.exit_code}: {tail(stderr)}"
        return child.peak_rss_mb, f"WARNING: (c) {rows:,} rows: {why}"
    tally = orjson.loads(child.stdout)
    note = (
        f"(c) {rows:,} rows: {tally['created']:,} created, {tally['not_sent']:,} given up, "
        f"{tally['errors']} errors in {child.seconds:.1f} s, peak RSS {child.peak_rss_mb:.0f} MB"
    )
    if tally["errors"]:
        note += f" (errors: {tally['first_error']})"
    return child.peak_rss_mb, note


def memory(sizes: Sizes, work: Path, *, uvloop_installed: bool) -> Line:
    """Scenario 4: peak RSS of whole runs as the manifest grows.

    The cap (``--quota 1000 --max-wait 0``) keeps the run short: after 1,000 creations
    every row is deferred, but the reader, validation, identities, state and the output
    files still handle each one. (c) gets the same quota from its sandbox.
    """
    small, big = sizes.memory
    notes: list[str] = []
    with SandboxProcess() as sb:
        rss_small, note = _provisioner_rss(sb.url, small, work)
        notes.append(note)
        rss_big, note = _provisioner_rss(sb.url, big, work)
        notes.append(note)
    gathered = []
    for rows in sizes.gather_memory:
        rss, note = _gather_rss(rows, work)
        gathered.append((rows, rss))
        notes.append(note)
    (g0, r0), (g1, r1) = gathered[0], gathered[-1]
    per_100k = (r1 - r0) / (g1 - g0) * 100_000
    notes.append(
        f"(c) grows ~{per_100k:.0f} MB per 100,000 rows: ~{r0 + per_100k * (big - g0) / 1e5:,.0f}"
        f" MB at {big:,} rows (extrapolated, not run)"
    )
    if uvloop_installed:
        notes.append("the provisioner CLI ran on uvloop (installed); (c) on asyncio's loop")
    # "No growth" as an absolute bound: the peak wobbles by a few MB from run to run
    # (allocator, when a sample lands), and 10 MB over 4M more rows would still catch
    # anything kept per row from 2.5 bytes up; (c) keeps ~1,700 bytes per row.
    growth = rss_big - rss_small
    per_row = growth * 2**20 / (big - small)
    c_per_row = (r1 - r0) * 2**20 / (g1 - g0)
    return Line(
        f"4. Memory, {small:,} and {big:,} rows (quota cap {MEMORY_QUOTA:,})",
        f"peak {rss_small:.0f} MB @{small / 1e6:g}M, {rss_big:.0f} MB @{big / 1e6:g}M",
        gather=f"{r0:.0f} MB @{g0 / 1e3:g}k → {r1:.0f} MB @{g1 / 1e3:g}k",
        ratio=f"{growth:+.0f} MB, {per_row:+.1f} B/extra row; (c) {c_per_row:+,.0f} B/row",
        target="≤ 150 MB; growth ≤ 10 MB",
        met=rss_big <= 150 and growth <= 10 and not any("WARNING" in n for n in notes),
        notes=notes,
    )


def incremental_skip(sizes: Sizes, work: Path) -> Line:
    """Scenario 5: every row was created by an earlier run (the store is filled as
    ``bench_run.prepopulate`` does); the run must skip them all and send nothing."""
    n = sizes.skip
    manifest = work / "skip.csv"
    bench_run.write_manifest(manifest, n)
    state = work / "skip-state.sqlite3"
    bench_run.prepopulate(state, n)  # bench_run.KEY is the key the sandbox accepts here
    assert bench_run.KEY == KEY
    notes: list[str] = []
    with SandboxProcess() as sb:
        make = _provision(sb.url, manifest, work, "skip", state_path=str(state))
        box: list[RunResult] = []
        m = measured(sb, n, lambda: box.append(run_loop(make())))
        sent = sb.requests_total()
    skipped = box[0].counts.get("skipped", 0)
    notes.append(f"skipped {skipped:,} of {n:,}: {m.describe()}")
    return Line(
        f"5. Incremental skip, {n:,} rows already created",
        f"{rate(m)}, {sent} requests",
        "— (no state: resends all)",
        "— (no state: resends all)",
        "— (no state: resends all)",
        f"{m.rows_per_s / 200_000:.2f} × target",
        "≥ 200,000 rows/s, 0 requests",
        m.rows_per_s >= 200_000 and sent == 0 and skipped == n,
        notes,
    )


def run_all(sizes: Sizes, work: Path, *, uvloop_installed: bool) -> list[Line]:
    """Every scenario in order; uvloop's line only when it is importable."""
    first, on_asyncio = capacity(sizes, work)
    lines = [first]
    if uvloop_installed:
        lines.append(capacity_uvloop(sizes, work, on_asyncio))
    lines.append(latency_bound(sizes, work))
    lines.append(quota_precision(sizes, work))
    lines.append(memory(sizes, work, uvloop_installed=uvloop_installed))
    lines.append(incremental_skip(sizes, work))
    return lines
