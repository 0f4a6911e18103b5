"""Scenario 4: peak RSS of whole runs as the manifest grows, the provisioner against (c).

Both run as child processes, so that each peak is that process's own (VmHWM sampled by
``support.run_child``), not the benchmark's.
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
from scenarios import CONCURRENCY, Line, Sizes
from support import KEY, ROOT, SandboxProcess, child_env, run_child, tail, write_manifest

MEMORY_QUOTA = 1000


def _provisioner_rss(url: str, rows: int, work: Path, rep: int) -> tuple[float, str]:
    """Peak RSS (MB) of ``provisioner run`` over a generated manifest, in a child process,
    and a note on what it did."""
    tag = f"mem{rows}-{rep}"
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
        f"provisioner {rows:,} rows: {counts.get('created', 0):,} created, "
        f"{counts.get('deferred', 0):,} deferred in {child.seconds:.1f} s "
        f"({rows / child.seconds:,.0f} rows/s), peak RSS {child.peak_rss_mb:.0f} MB "
        f"reached at {child.peak_at:.1f} s"
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
        f"{tally['errors']} errors in {child.seconds:.1f} s, peak RSS {child.peak_rss_mb:.0f} MB "
        f"reached at {child.peak_at:.1f} s"
    )
    if tally["errors"]:
        note += f" (errors: {tally['first_error']})"
    return child.peak_rss_mb, note


def memory(sizes: Sizes, work: Path, *, uvloop_installed: bool) -> Line:
    """Scenario 4: the provisioner's peak RSS at two manifest sizes, (c)'s at several.

    The cap (``--quota 1000 --max-wait 0``) keeps the run short: after 1,000 creations
    every row is deferred, but the reader, validation, identities, state and the output
    files still handle each one. (c) gets the same quota from its sandbox.

    The peak reported against the 150 MB target is the highest of all runs; the growth is
    the lowest peak at the big size minus the lowest at the small one. One 5M run once
    peaked 12 MB above its 1M run while others at the same code stayed flat (60 MB from
    the fourth second to the end), so a single run can mislead about growth; each note
    says when its peak was reached, which tells a start-up peak from growth.
    """
    small, big = sizes.memory
    notes: list[str] = []
    peaks: dict[int, list[float]] = {small: [], big: []}
    with SandboxProcess() as sb:
        for rep in range(sizes.memory_repeats):
            for rows in (small, big):
                rss, note = _provisioner_rss(sb.url, rows, work, rep)
                peaks[rows].append(rss)
                notes.append(note)
    gathered = []
    for rows in sizes.gather_memory:
        rss, note = _gather_rss(rows, work)
        gathered.append((rows, rss))
        notes.append(note)
    (g0, r0), (g1, r1) = gathered[0], gathered[-1]
    c_per_row = (r1 - r0) * 2**20 / (g1 - g0)
    notes.append(
        f"(c) keeps ~{c_per_row:,.0f} bytes per row: ~{(r0 + c_per_row * (big - g0) / 2**20):,.0f}"
        f" MB at {big:,} rows (extrapolated, not run)"
    )
    if uvloop_installed:
        notes.append("the provisioner CLI ran on uvloop (installed); (c) on asyncio's loop")
    # "No growth" as an absolute bound: 10 MB over 4M more rows would still show anything
    # kept per row from 2.5 bytes up, while a few MB of wobble between runs is not growth.
    peak = max(peaks[small] + peaks[big])
    growth = min(peaks[big]) - min(peaks[small])
    per_row = growth * 2**20 / (big - small)

    def cell(rows: int) -> str:
        return "/".join(f"{p:.0f}" for p in peaks[rows]) + f" MB @{rows / 1e6:g}M"

    return Line(
        f"4. Memory, {small:,} and {big:,} rows (quota cap {MEMORY_QUOTA:,})",
        f"peak {cell(small)}, {cell(big)}",
        gather=f"{r0:.0f} MB @{g0 / 1e3:g}k → {r1:.0f} MB @{g1 / 1e3:g}k",
        ratio=f"{growth:+.0f} MB, {per_row:+.1f} B/extra row; (c) {c_per_row:+,.0f} B/row",
        target="≤ 150 MB; growth ≤ 10 MB",
        met=peak <= 150 and growth <= 10 and not any("WARNING" in n for n in notes),
        notes=notes,
    )
