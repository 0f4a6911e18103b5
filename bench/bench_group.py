"""Cooperating workers (``run --group``): rows/s of 1, 2 and 4 worker processes over one
manifest against a sandbox process with 100 ms latency and a quota that does not bind, on
a throwaway PostgreSQL server (fsync on), in one run.

Each worker is a ``provisioner run`` process (concurrency 16, as by default); the figure is
the manifest's rows over the wall time from the first worker's start to the last one's
end (start-up, the group's join and the final wait included). Every configuration gets
its own database and rows of its own (a repeated combination costs the sandbox less).

Run ``.venv/bin/python bench/bench_group.py [--quick]``; prints one table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from support import KEY, ROOT, SandboxProcess, write_manifest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.pg_server import PgServer, start_server

LATENCY_MS = 100
WORKERS = (1, 2, 4)


def run_group(sandbox: str, manifest: Path, url: str, workers: int, work: Path) -> float:
    """Start ``workers`` worker processes of one group; the wall time until all ended."""
    env = {**os.environ, "BRAZE_API_KEY": KEY, "PYTHONPATH": str(ROOT)}
    env.pop("PROVISIONER_STATE", None)
    start = time.perf_counter()
    common = [
        "--base-url", sandbox, "--state", url, "--group", "bench", "--rate", "100000",
        "--log-level", "error", "--log-format", "json",
    ]  # fmt: skip
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "provisioner",
                "run",
                str(manifest),
                *common,
                "--out",
                str(work / f"out-{workers}-{i}"),
            ],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(workers)
    ]
    codes = [p.wait() for p in procs]
    elapsed = time.perf_counter() - start
    if any(codes):
        raise RuntimeError(f"a worker failed: exit codes {codes}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 rows instead of 6,000")
    args = parser.parse_args()
    rows = 2000 if args.quick else 6000
    work = Path(tempfile.mkdtemp(prefix="provisioner-bench-group-"))
    server: PgServer = start_server(work / "pg", fsync=True)
    try:
        results: list[tuple[int, float]] = []
        with SandboxProcess(latency_ms=LATENCY_MS) as sb:
            for workers in WORKERS:
                manifest = write_manifest(work / f"m{workers}.csv", rows, f"g{workers}")
                url = server.create_database(f"b_{uuid.uuid4().hex[:12]}")
                results.append((workers, run_group(sb.url, manifest, url, workers, work)))
        one = rows / results[0][1]
        print(
            f"cooperating workers: {rows} rows, sandbox latency {LATENCY_MS} ms, quota not"
            " binding, concurrency 16 per worker, PostgreSQL on loopback"
        )
        print(f"{'workers':>7}  {'wall s':>7}  {'rows/s':>7}  {'speed-up':>8}  {'of linear':>9}")
        for workers, elapsed in results:
            rate = rows / elapsed
            print(
                f"{workers:>7}  {elapsed:>7.2f}  {rate:>7.0f}  {rate / one:>7.2f}x"
                f"  {rate / one / workers:>8.0%}"
            )
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
