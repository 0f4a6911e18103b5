"""Scenario 5 (issue 15): the skip path at 1M and 5M rows and the store's growth, side by
side with a baseline tree (main's code, ``git archive`` of the merge base with ``main``).

Every measured run is ``provisioner run`` in a child process (its peak RSS is its own
VmHWM) against a store an earlier run filled with every row (``stores.prepopulate``, run
by the same tree in another child, since the trees' store formats differ). Reported per
tree and size: rows per second (summary.json's duration), what the skip run added to the
store (file + WAL), peak RSS. A second line: the store a run leaves that defers every row
(``--quota 1 --max-wait 0``), per row, extrapolated to 10M rows.

Run alone: ``.venv/bin/python bench/skip_scenario.py [--quick]``.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path
from typing import Any

import orjson
from scenarios import Line, Sizes
from support import ROOT, SandboxProcess, child_env, run_child, tail, write_manifest

SKIP_TARGET, SKIP_BAR = 300_000, 250_000
#: The largest size the baseline runs at (a loaded machine may not afford main at 5M).
BASELINE_MAX = int(os.environ.get("BENCH_BASELINE_MAX", "100000000"))
GROWTH_GOAL_MB = 10  # per skip run over 1M rows
DEFER_GOAL_B = 30  # bytes a row: 300 MB at 10M deferred rows


def baseline_tree(work: Path) -> Path | None:
    """main's code (the merge base of HEAD and ``main``) unpacked under ``work``, or None
    outside a git checkout; ``BENCH_BASELINE_TREE`` names an unpacked tree instead."""
    given = os.environ.get("BENCH_BASELINE_TREE")
    if given:
        return Path(given)
    try:
        base = subprocess.run(
            ["git", "merge-base", "HEAD", "main"], cwd=ROOT, capture_output=True, text=True,
            check=True,
        ).stdout.strip()  # fmt: skip
        data = subprocess.run(
            ["git", "archive", "--format=tar", base, "provisioner", "bench"],
            cwd=ROOT, capture_output=True, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    where = work / f"main-{base[:8]}"
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(where, filter="data")
    return where


def _env(tree: Path) -> dict[str, str]:
    env = child_env()
    env["PYTHONPATH"] = str(tree)
    return env


def _store_bytes(state: Path) -> int:
    return sum(p.stat().st_size for p in (state, Path(f"{state}-wal")) if p.exists())


def _seed(tree: Path, state: Path, rows: int, work: Path) -> None:
    code = (
        "import sys; sys.path.insert(0, sys.argv[3]); import stores; "
        "stores.prepopulate(sys.argv[1], int(sys.argv[2]))"
    )
    args = [sys.executable, "-c", code, str(state), str(rows), str(tree / "bench")]
    subprocess.run(args, env=_env(tree), cwd=tree, check=True, timeout=300 + rows / 1_000)


def _run(
    tree: Path, url: str, manifest: Path, state: Path, out: Path, *extra: str
) -> dict[str, Any]:
    args = [sys.executable, "-m", "provisioner", "run", str(manifest), "--out", str(out),
            "--base-url", url, "--rate", "1000000", "--state", str(state),
            "--progress", "never", "--log-format", "json", "--log-level", "error",
            *extra]  # fmt: skip
    stderr = out.parent / f"{out.name}.stderr"
    rows = sum(1 for _ in manifest.open()) - 1
    # cwd: ``-m`` puts the working folder first on sys.path, before PYTHONPATH.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    child = run_child(
        args, env=_env(tree), stderr_path=stderr, timeout=300 + rows / 1_000, cwd=tree
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    summary: dict[str, Any] = {"exit_code": child.exit_code, "why": tail(stderr)}
    if (out / "summary.json").exists():
        summary = orjson.loads((out / "summary.json").read_bytes())
    summary["peak_rss_mb"] = child.peak_rss_mb
    summary["cpu_us_per_row"] = cpu / rows * 1e6 if rows else 0.0
    return summary


def skip_at_scale(sizes: Sizes, work: Path) -> list[Line]:
    """Scenario 5 (skip rate, growth, memory) and 5d (a deferring run's store)."""
    trees = {"this tree": ROOT}
    base = baseline_tree(work)
    if base is not None:
        trees["main"] = base
    notes: list[str] = []
    rates: dict[tuple[str, int], float] = {}
    growth: dict[tuple[str, int], float] = {}
    peaks: dict[tuple[str, int], float] = {}
    for rows in sizes.skip_scale:
        manifest = write_manifest(work / f"skip{rows}.csv", rows, "")
        for name, tree in trees.items():
            if name == "main" and rows > BASELINE_MAX:
                notes.append(f"main, {rows:,} rows: not run (BENCH_BASELINE_MAX={BASELINE_MAX})")
                continue
            tag = f"{name.replace(' ', '-')}-{rows}"
            state = work / f"skip-{tag}.sqlite3"
            _seed(tree, state, rows, work)
            before = _store_bytes(state)
            with SandboxProcess() as sb:
                summary = _run(tree, sb.url, manifest, state, work / f"out-skip-{tag}")
                sent = sb.requests_total()
            skipped = summary.get("counts", {}).get("skipped", 0)
            seconds = float(summary.get("duration_s") or 0) or float("inf")
            key = (name, rows)
            rates[key] = rows / seconds
            growth[key] = (_store_bytes(state) - before) / 1e6
            peaks[key] = summary["peak_rss_mb"]
            notes.append(
                f"{name}, {rows:,} rows: skipped {skipped:,}, {sent} requests, "
                f"{rates[key]:,.0f} rows/s over {seconds:.1f} s "
                f"({summary['cpu_us_per_row']:.1f} us CPU/row), store {before / 1e6:.0f} MB "
                f"+ {growth[key]:.1f} MB ({growth[key] * 1e6 / rows:.1f} B/row), peak RSS "
                f"{peaks[key]:.0f} MB" + ("" if skipped == rows else f"; WARNING {summary}")
            )
            state.unlink()
            Path(f"{state}-wal").unlink(missing_ok=True)
        manifest.unlink()
    small, large = sizes.skip_scale[0], sizes.skip_scale[-1]
    mine = [rates["this tree", n] for n in sizes.skip_scale]
    met = min(mine) >= SKIP_BAR and rates["this tree", large] >= 0.95 * rates["this tree", small]
    met = met and growth["this tree", small] * 1e6 / small <= GROWTH_GOAL_MB
    cell = ", ".join(f"{rates['this tree', n]:,.0f} rows/s at {n:,}" for n in sizes.skip_scale)
    main_cell = (
        ", ".join(
            f"main {rates['main', n]:,.0f} rows/s at {n:,}"
            for n in sizes.skip_scale
            if ("main", n) in rates
        )
        if "main" in trees
        else "main: not available"
    )
    lines = [
        Line(
            f"5. Skip, {small:,} and {large:,} rows already created",
            f"{cell}; +{growth['this tree', small] * 1e6 / small:.1f} B/row of store per run,"
            f" peak {max(peaks['this tree', n] for n in sizes.skip_scale):.0f} MB",
            main_cell,
            ratio=f"{min(mine) / SKIP_TARGET:.2f} × target",
            target=f"≥ {SKIP_TARGET:,} rows/s (bar {SKIP_BAR:,}), ≤ {GROWTH_GOAL_MB} B/row",
            met=met,
            notes=notes,
        )
    ]
    lines.append(_deferred_store(sizes, work, trees))
    return lines


def _deferred_store(sizes: Sizes, work: Path, trees: dict[str, Path]) -> Line:
    """The store a run leaves that defers (almost) every row of ``sizes.defer_store``."""
    rows = sizes.defer_store
    manifest = write_manifest(work / f"defer{rows}.csv", rows, "d")
    per_row: dict[str, float] = {}
    notes: list[str] = []
    for name, tree in trees.items():
        tag = name.replace(" ", "-")
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            state = Path(tmp) / "defer.sqlite3"
            with SandboxProcess() as sb:
                summary = _run(tree, sb.url, manifest, state, Path(tmp) / f"out-{tag}",
                               "--quota", "1", "--max-wait", "0")  # fmt: skip
            size = _store_bytes(state)
        deferred = summary.get("counts", {}).get("deferred", 0)
        per_row[name] = size / rows
        notes.append(
            f"{name}: {deferred:,} of {rows:,} rows deferred, store {size / 1e6:.1f} MB "
            f"({per_row[name]:.1f} B/row; 10M rows: {per_row[name] * 1e7 / 1e6:,.0f} MB), "
            f"peak RSS {summary['peak_rss_mb']:.0f} MB"
        )
    manifest.unlink()
    mine = per_row["this tree"]
    return Line(
        f"5d. Store after a run deferring {rows:,} rows",
        f"{mine:.1f} B/row (10M rows: {mine * 10:,.0f} MB)",
        f"main {per_row['main']:.1f} B/row" if "main" in per_row else "main: not available",
        ratio=f"{mine / DEFER_GOAL_B:.2f} × goal",
        target=f"< {DEFER_GOAL_B} B/row (300 MB at 10M)",
        met=mine < DEFER_GOAL_B,
        notes=notes,
    )


if __name__ == "__main__":
    from scenarios import FULL, QUICK

    chosen = QUICK if "--quick" in sys.argv else FULL
    with tempfile.TemporaryDirectory(prefix="provisioner-skip-bench-") as tmp:
        for line in skip_at_scale(chosen, Path(tmp)):
            print(f"{line.scenario}: {line.provisioner} | {line.sequential} | {line.ratio}")
            for note in line.notes:
                print(f"  {note}")
