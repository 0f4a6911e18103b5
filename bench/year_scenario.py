"""Scenario 6: a year of nightly runs. The same manifest run again and again (the first
run creates every row, the others skip them all), the store's size on disk after each
run, with retention on (keep the last ``KEEP_RUNS`` runs, however young) and off, side
by side in one run. The per-row figures extrapolate to other manifest sizes.
"""

from __future__ import annotations

import time
from pathlib import Path

from scenarios import Line, _provision
from support import SandboxProcess, run_loop, write_manifest

from provisioner._state.opening import open_store
from provisioner._state.retention import Policy, file_bytes

#: (rows, runs, keep_runs) per mode: full fits a few minutes, quick a few seconds.
FULL_YEAR = (100_000, 30, 10)
QUICK_YEAR = (5_000, 8, 3)
#: A day in keep_days is 86,400 s: 1e-6 days (0.09 s) keeps runs by count alone.
ONLY_BY_COUNT = 0.000001


def _series(
    manifest: Path, work: Path, tag: str, runs: int, keep_days: float, keep_runs: int
) -> tuple[list[int], list[float]]:
    """Store bytes (file + WAL) and wall seconds after each of ``runs`` runs."""
    state = work / f"{tag}.sqlite3"
    sizes: list[int] = []
    seconds: list[float] = []
    with SandboxProcess() as sb:
        make = _provision(
            sb.url,
            manifest,
            work,
            tag,
            state_path=str(state),
            state_keep_days=keep_days,
            state_keep_runs=keep_runs,
        )
        for _ in range(runs):
            t0 = time.perf_counter()
            run_loop(make())
            seconds.append(time.perf_counter() - t0)
            sizes.append(file_bytes(state))
    return sizes, seconds


def _prune_by_hand(state: Path, keep: int) -> str:
    """``provisioner prune`` of the store that ran without retention, timed."""
    store = open_store(state)
    t0 = time.perf_counter()
    try:
        pruned = store.prune(Policy(ONLY_BY_COUNT, keep))
    finally:
        store.close()
    seconds = time.perf_counter() - t0
    return (
        f"prune by hand of the store without retention (keep_runs={keep}):"
        f" {len(pruned.runs)} runs, {pruned.rows:,} rows in {seconds:.1f} s"
        f" ({pruned.rows / seconds:,.0f} rows/s, vacuum included),"
        f" {_mb(pruned.bytes_before)} -> {_mb(pruned.bytes_after)}"
    )


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def year_of_runs(work: Path, *, quick: bool) -> Line:
    """Scenario 6: the store after ``runs`` nightly runs, retention on and off."""
    rows, runs, keep = QUICK_YEAR if quick else FULL_YEAR
    manifest = write_manifest(work / "year.csv", rows, "year")
    on, on_s = _series(manifest, work, "year-on", runs, ONLY_BY_COUNT, keep)
    off, off_s = _series(manifest, work, "year-off", runs, 0.0, keep)
    per_skip_run = (off[-1] - off[0]) / (runs - 1) / rows  # bytes a skipped row adds a run
    created = on[0] / rows  # bytes per row after the creating run
    steady = on[keep:]  # pruning one run per run from here on
    flat = max(steady) <= 1.10 * min(steady) if steady else False
    notes = [
        f"store after each run, retention on (keep_runs={keep}, keep_days={ONLY_BY_COUNT}):"
        f" {', '.join(_mb(s) for s in on)}",
        f"store after each run, retention off (keep_days=0): {', '.join(_mb(s) for s in off)}",
        f"per row: {created:,.0f} bytes after the creating run; each skip run adds"
        f" {per_skip_run:,.0f} bytes a row without retention",
        f"wall time of a skip run: {sum(on_s[1:]) / (runs - 1):.2f} s with retention (pruning"
        f" included), {sum(off_s[1:]) / (runs - 1):.2f} s without",
        _prune_by_hand(work / "year-off.sqlite3", keep),
        f"extrapolated to 1,000,000 rows a night for 365 nights: without retention"
        f" {_mb(1e6 * (created + 364 * per_skip_run))}, with keep_runs={keep}"
        f" {_mb(1e6 * max(steady) / rows) if steady else '—'} (flat)",
    ]
    return Line(
        f"6. Year of nightly runs, {rows:,} rows x {runs} runs",
        f"{_mb(on[-1])} with retention, {_mb(off[-1])} without",
        ratio=f"{on[-1] / off[-1]:.2f} × without",
        target=f"flat (±10%) after run {keep + 1}",
        met=flat,
        notes=notes,
    )
