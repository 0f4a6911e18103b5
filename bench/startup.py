"""Start-up: whole-process wall time of `provisioner --help` and of a 100-row run.

Two installs are compared side by side, paired and alternated (A B, B A, A B ...), so that
a shared machine's load falls on both alike; the medians are reported. Each run gets its
own state store (nothing skipped) against one sandbox started here, at --rate 5000 so the
pace is not what is measured.

    python bench/startup.py --pairs 15 BASELINE/bin/provisioner CANDIDATE/bin/provisioner

``--pycache DIR`` lets Python cache bytecode there (PYTHONPYCACHEPREFIX), as an installed
wheel has it; without it an environment with PYTHONDONTWRITEBYTECODE set compiles every
module of an editable install at each start (~0.4 s here), which no user pays.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system) of one run of ``argv``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("commands", nargs="+", help="provisioner executables to compare")
    parser.add_argument("--pairs", type=int, default=15)
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--pycache", help="cache bytecode in this folder (see above)")
    args = parser.parse_args()
    env = {**os.environ, "BRAZE_API_KEY": "sandbox-key"}
    env.pop("PROVISIONER_STATE", None)
    if args.pycache:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(Path(args.pycache).resolve())
    sandbox = subprocess.Popen(
        [args.commands[0], "sandbox", "--port", "0", "--daily-quota", "100000000"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    try:
        assert sandbox.stdout is not None
        url = sandbox.stdout.readline().strip()
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            manifest = folder / "m.csv"
            lines = ["campaign_id,send_id", *(f"c{i % 3},s{i}" for i in range(args.rows))]
            manifest.write_text("\n".join(lines) + "\n")
            times: dict[tuple[str, str], list[tuple[float, float]]] = {}
            for pair in range(-1, args.pairs):  # -1: a warm-up (disk cache, bytecode)
                order = args.commands if pair % 2 == 0 else list(reversed(args.commands))
                for n, command in enumerate(order):
                    help_s = timed([command, "--help"], env)
                    run = [
                        command, "run", str(manifest), "--out", str(folder / f"o{pair + 1}{n}"),
                        "--state", str(folder / f"s{pair + 1}{n}.sqlite3"), "--base-url", url,
                        "--rate", "5000",
                    ]  # fmt: skip
                    run_s = timed(run, env)
                    if pair >= 0:
                        times.setdefault((command, "help"), []).append(help_s)
                        times.setdefault((command, "run"), []).append(run_s)
    finally:
        sandbox.terminate()
        sandbox.wait()
    cache = (
        f"bytecode cached in {args.pycache}"
        if args.pycache
        else "bytecode as the environment has it"
    )
    print(f"{args.pairs} pairs, medians (min-max), {os.cpu_count()} CPUs, {cache}")
    for (command, what), values in times.items():
        walls, cpus = [v[0] for v in values], [v[1] for v in values]
        print(
            f"{what:5} wall {statistics.median(walls):.3f} s ({min(walls):.3f}-{max(walls):.3f})"
            f"  cpu {statistics.median(cpus):.3f} s  {command}"
        )
    if len(args.commands) == 2:
        first, second = args.commands
        for what in ("help", "run"):
            a, b = times[(first, what)], times[(second, what)]
            wall = statistics.median(y[0] - x[0] for x, y in zip(a, b, strict=True))
            cpu = statistics.median(y[1] - x[1] for x, y in zip(a, b, strict=True))
            print(f"{what:5} second - first, median of pairs: wall {wall:+.3f} s, cpu {cpu:+.3f} s")


if __name__ == "__main__":
    main()
