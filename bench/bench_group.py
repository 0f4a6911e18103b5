"""Cooperating workers (``run --group``): rows/s of 1, 2 and 4 worker processes over one
manifest against a sandbox process with 100 ms latency and a quota that does not bind, on
a throwaway PostgreSQL server (fsync on), in one run.

A plain run (no ``--group``, the same store) comes first, as the baseline of one process.
Each worker is a ``provisioner run`` process (concurrency 16, as by default); the figure is
the manifest's rows over the wall time from the first worker's start to the last one's
end (start-up, the group's join and the final wait included), and over the runs' own span
(from the first run's start to the last one's finish, as their summaries say: process
start-up left out). Every configuration gets
its own database and rows of its own (a repeated combination costs the sandbox less).

Run ``.venv/bin/python bench/bench_group.py [--quick]``; prints one table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

from support import KEY, ROOT, SandboxProcess, write_manifest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.pg_server import PgServer, start_server

LATENCY_MS = 100
WORKERS = (1, 2, 4)


def run_group(
    sandbox: str, manifest: Path, url: str, workers: int, work: Path, *, group: bool = True
) -> tuple[float, float, float]:
    """Start ``workers`` worker processes of one group; the wall time until all ended, the
    span from the first run's start to the last one's finish (their summaries: start-up
    of the processes left out) and the CPU seconds the workers used together."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {**os.environ, "BRAZE_API_KEY": KEY, "PYTHONPATH": str(ROOT)}
    env.pop("PROVISIONER_STATE", None)
    start = time.perf_counter()
    common = [
        "--base-url", sandbox, "--state", url, "--rate", "100000",
        "--log-level", "error", "--log-format", "json",
        *(("--group", "bench") if group else ()),
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
                str(work / f"out-{workers}-{group}-{i}"),
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
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if any(codes):
        raise RuntimeError(f"a worker failed: exit codes {codes}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    summaries = [
        json.loads((work / f"out-{workers}-{group}-{i}" / "summary.json").read_text())
        for i in range(workers)
    ]
    first = min(_epoch(s["started_at"]) for s in summaries)
    last = max(_epoch(s["finished_at"]) for s in summaries)
    return elapsed, last - first, cpu


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _cpu_of(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 rows instead of 6,000")
    args = parser.parse_args()
    rows = 2000 if args.quick else 6000
    work = Path(tempfile.mkdtemp(prefix="provisioner-bench-group-"))
    server: PgServer = start_server(work / "pg", fsync=True)
    try:
        results: list[tuple[str, int, float, float, float, float]] = []
        with SandboxProcess(latency_ms=LATENCY_MS) as sb:
            assert sb.proc is not None
            for name, workers in (("no --group", 1), *((f"{n} workers", n) for n in WORKERS)):
                tag = f"g{len(results)}"
                manifest = write_manifest(work / f"{tag}.csv", rows, tag)
                url = server.create_database(f"b_{uuid.uuid4().hex[:12]}")
                sandbox_cpu = _cpu_of(sb.proc.pid)
                group = name != "no --group"
                elapsed, span, cpu = run_group(sb.url, manifest, url, workers, work, group=group)
                sandbox_cpu = _cpu_of(sb.proc.pid) - sandbox_cpu
                results.append((name, workers, elapsed, span, cpu, sandbox_cpu / elapsed))
        one, one_span = rows / results[1][2], rows / results[1][3]  # 1 worker's rows/s
        print(
            f"cooperating workers: {rows} rows, sandbox latency {LATENCY_MS} ms, quota not"
            " binding, concurrency 16 per worker, PostgreSQL on loopback"
        )
        print(
            f"{'run':>10}  {'wall s':>6}  {'rows/s':>6}  {'speed-up':>8}  {'of linear':>9}"
            f"  {'runs s':>6}  {'rows/s':>6}  {'speed-up':>8}  {'of linear':>9}"
            f"  {'CPU ms/row':>10}  {'sandbox CPU':>11}"
        )
        for name, workers, elapsed, span, cpu, busy in results:
            rate, rate_span = rows / elapsed, rows / span
            print(
                f"{name:>10}  {elapsed:>6.1f}  {rate:>6.0f}  {rate / one:>7.2f}x"
                f"  {rate / one / workers:>8.0%}  {span:>6.1f}  {rate_span:>6.0f}"
                f"  {rate_span / one_span:>7.2f}x  {rate_span / one_span / workers:>8.0%}"
                f"  {cpu / rows * 1000:>10.2f}  {busy:>10.0%}"
            )
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
