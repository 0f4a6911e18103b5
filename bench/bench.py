"""The provisioner against three baseline clients, in one run, as one table (issue 6).

Run: ``make bench`` (full sizes, several minutes) or ``make bench-quick`` (reduced sizes
of the same scenarios, under a minute); directly: ``.venv/bin/python bench/bench.py
[--quick]``. The sandbox runs in its own process, so its CPU is not the client's. The
script prints; nothing here or in the test suite asserts a time. BENCHMARKS.md says what
each scenario measures.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable without installing

from bench_pg import side_by_side
from memory_scenario import memory
from own_overhead import own_overhead
from scenarios import (
    FULL,
    QUICK,
    Line,
    Sizes,
    capacity,
    latency_bound,
    quota_precision,
)
from skip_scenario import skip_at_scale
from support import ROOT, has_uvloop
from year_scenario import year_of_runs

from provisioner._core import logs

COLUMNS = ("Scenario", "Provisioner", "(a) sequential", "(b) worker pool", "(c) gather",
           "Ratio", "Target", "Result")  # fmt: skip


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _revision() -> str:
    """The commit measured, flagged when provisioner/ has uncommitted changes (others edit
    it while benchmarks run, so a figure must say which code it belongs to)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "provisioner"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head} (with uncommitted changes in provisioner/)" if dirty else head


def header(mode: str, load: tuple[float, float]) -> list[str]:
    """What was measured, where and when; the load average says whether other work
    shared the machine (two cores: a load above ~2 means the figures are pessimistic)."""
    return [
        f"provisioner benchmark, {mode} mode, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"machine: {os.cpu_count()} cores ({_cpu_model()}), {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()}; aiohttp "
        f"{_version('aiohttp')}, orjson {_version('orjson')}, uvloop {_version('uvloop')}",
        f"code: {_revision()}",
        f"load average (1 min) before: {load[0]:.2f}, after: {load[1]:.2f}",
    ]


def table(lines: list[Line]) -> list[str]:
    """The results as a Markdown table, padded so it also reads on a terminal."""
    rows = [COLUMNS] + [
        (
            line.scenario,
            line.provisioner,
            line.sequential,
            line.pool,
            line.gather,
            line.ratio,
            line.target,
            "—" if line.met is None else "MET" if line.met else "NOT MET",
        )
        for line in lines
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]

    def fmt(row: tuple[str, ...]) -> str:
        return "| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return [fmt(rows[0]), rule, *(fmt(row) for row in rows[1:])]


def run_all(sizes: Sizes, work: Path, *, uvloop_installed: bool) -> list[Line]:
    """Every scenario in the issue's order; uvloop's line only when it is importable."""
    lines, pool = capacity(sizes, work, uvloop_installed=uvloop_installed)
    lines.append(own_overhead(sizes, work, pool))
    lines.append(latency_bound(sizes, work))
    lines.append(quota_precision(sizes, work))
    lines.append(memory(sizes, work, uvloop_installed=uvloop_installed))
    lines.extend(skip_at_scale(sizes, work))
    lines.append(year_of_runs(work, quick=sizes is QUICK))
    lines.extend(side_by_side(sizes, work))  # 1p and 5p: the store in PostgreSQL
    return lines


def main() -> int:
    """Run every scenario and print the header, the table and the details under it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced sizes (under a minute)")
    args = parser.parse_args()
    mode = "quick" if args.quick else "full"
    logs.configure("json", "error")  # in-process runs: no per-run warnings on the table
    start = time.perf_counter()
    load_before = os.getloadavg()[0]
    uvloop_installed = has_uvloop()
    with tempfile.TemporaryDirectory(prefix="provisioner-bench-") as tmp:
        lines = run_all(QUICK if args.quick else FULL, Path(tmp), uvloop_installed=uvloop_installed)
    print("\n".join(header(mode, (load_before, os.getloadavg()[0]))))
    print()
    print("\n".join(table(lines)))
    print()
    print("Details:")
    for line in lines:
        number = line.scenario.split(".", 1)[0]
        for note in line.notes:
            print(f"  {number}: {note}")
    if not uvloop_installed:
        print("  uvloop is not installed: no uvloop line (pip install 'provisioner[speed]')")
    targets = [line.met for line in lines if line.met is not None]
    print()
    print(
        f"targets met: {sum(targets)} of {len(targets)}; "
        f"runtime {time.perf_counter() - start:.0f} s ({mode} mode)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
