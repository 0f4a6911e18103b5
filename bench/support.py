"""Plumbing shared by the benchmark's scenarios: the sandbox in its own process, manifests,
CPU and memory accounting, event loops.

Nothing here measures anything by itself; ``scenarios.py`` decides what is timed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import orjson

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-key"
T = TypeVar("T")

#: The "quota does not bind" settings of scenarios 1 and 2.
BIG_QUOTA = "1000000000"


class SandboxProcess:
    """``python -m provisioner sandbox`` in a child process, so its CPU is not the client's.

    Use as a context manager; ``url`` is the first line the sandbox prints.
    """

    def __init__(self, *, quota: str = BIG_QUOTA, window: int = 86400, latency_ms: int = 0):
        self.args = [
            sys.executable,
            "-m",
            "provisioner",
            "sandbox",
            "--api-key",
            KEY,
            "--daily-quota",
            quota,
            "--window-seconds",
            str(window),
            "--latency-ms",
            str(latency_ms),
        ]
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> SandboxProcess:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http"):
            self.proc.kill()
            raise RuntimeError(f"the sandbox did not start: {self.url!r}")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()

    def cpu_seconds(self) -> float:
        """User + system CPU the sandbox has used so far (from /proc/PID/stat)."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        # Fields 14 and 15 of stat(5) (utime, stime); index 0 here is field 3.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def ledger(self) -> dict[str, Any]:
        """The sandbox's ledger (``GET /sandbox/ledger``): what it created and answered."""
        import urllib.request

        with urllib.request.urlopen(self.url + "/sandbox/ledger") as resp:
            doc: dict[str, Any] = orjson.loads(resp.read())
        return doc

    def requests_total(self) -> int:
        """Requests to ``/sends/id/create`` the sandbox has answered so far."""
        return int(self.ledger()["requests"]["total"])

    def status_count(self, status: int) -> int:
        """How many answers had this status code."""
        return int(self.ledger()["requests"]["by_status"].get(str(status), 0))


def write_manifest(path: Path, rows: int, prefix: str) -> Path:
    """A CSV manifest of ``rows`` distinct (campaign_id, send_id) rows, written in chunks
    so that a 5-million-row file never sits in memory. ``prefix`` keeps the rows of two
    runs against one sandbox distinct (a repeat costs the sandbox less than a creation)."""
    chunk = 10_000
    with path.open("w") as fh:
        fh.write("campaign_id,send_id\n")
        for start in range(0, rows, chunk):
            end = min(rows, start + chunk)
            fh.write("".join(f"{prefix}c{i:08d},{prefix}s{i:08d}\n" for i in range(start, end)))
    return path


@dataclass(frozen=True, slots=True)
class Measure:
    """One timed run: rows handled, wall time, and the CPU each side used meanwhile."""

    rows: int
    seconds: float
    client_cpu: float
    server_cpu: float
    machine_cpu: float  # every process's CPU meanwhile (from /proc/stat)
    warnings: list[str] = field(default_factory=list)

    @property
    def rows_per_s(self) -> float:
        """Rows per wall-clock second."""
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def cpu_note(self) -> str:
        """Client CPU per row and how busy the sandbox was (near 100% means it bound)."""
        per_row = self.client_cpu / self.rows * 1e6 if self.rows else 0.0
        busy = self.server_cpu / self.seconds * 100 if self.seconds > 0 else 0.0
        others = max(0.0, self.machine_cpu - self.client_cpu - self.server_cpu)
        other = others / self.seconds * 100 if self.seconds > 0 else 0.0
        return (
            f"client {per_row:.0f} us CPU/row, sandbox {busy:.0f}% of a core, "
            f"other processes {other:.0f}% of a core"
        )

    def describe(self) -> str:
        """The figure with its wall time, CPU split and any warning, for the details."""
        text = f"{self.rows_per_s:,.0f} rows/s over {self.seconds:.1f} s; {self.cpu_note()}"
        return text + "".join(f"; WARNING: {w}" for w in self.warnings)


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # all threads: the state writer too
    return usage.ru_utime + usage.ru_stime


def _machine_cpu() -> float:
    """CPU seconds every process on the machine has used since boot.

    The machine is shared (other sessions run tests and profilers): what others took
    during a measurement says how much to trust it.
    """
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields)
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def measured(sandbox: SandboxProcess, rows: int, action: Callable[[], object]) -> Measure:
    """Time ``action`` (which handles ``rows`` rows) with both processes' CPU."""
    cpu0, srv0, all0 = _own_cpu(), sandbox.cpu_seconds(), _machine_cpu()
    t0 = time.perf_counter()
    action()
    seconds = time.perf_counter() - t0
    return Measure(
        rows,
        seconds,
        _own_cpu() - cpu0,
        sandbox.cpu_seconds() - srv0,
        _machine_cpu() - all0,
    )


def has_uvloop() -> bool:
    """Whether the optional ``uvloop`` extra is importable."""
    return importlib.util.find_spec("uvloop") is not None


def run_loop(coro: Coroutine[Any, Any, T], *, uvloop: bool = False) -> T:
    """Run ``coro`` on a fresh loop: asyncio's own, or uvloop's (as the CLI does)."""
    if not uvloop:
        return asyncio.run(coro)
    import uvloop as uv

    with asyncio.Runner(loop_factory=uv.new_event_loop) as runner:
        return runner.run(coro)


@dataclass(frozen=True, slots=True)
class ChildResult:
    """A finished child process: exit code, wall time and its own peak RSS (MB)."""

    exit_code: int
    seconds: float
    peak_rss_mb: float
    peak_at: float  # seconds into the run when the peak was last raised
    stdout: str


def _vm_hwm_kb(pid: int) -> int:
    """The process's peak resident set so far (VmHWM, KiB); 0 once it has exited."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def run_child(
    args: list[str],
    *,
    env: dict[str, str],
    stderr_path: Path,
    timeout: float,
    cwd: Path = ROOT,
) -> ChildResult:
    """Run a child to the end, sampling its peak RSS (VmHWM) every 20 ms.

    Not ``ru_maxrss``: Linux carries the parent's peak into a child's ``ru_maxrss`` across
    fork and exec, so every child of a 230 MB benchmark process would "peak" at 230 MB.
    VmHWM belongs to the child's own address space and only grows, so sampling misses at
    most a rise in its last 20 ms. A child still running after ``timeout`` seconds is
    killed (exit code -9) so that one stuck measurement cannot hold the whole benchmark.
    """
    start = time.perf_counter()
    peak_kb, peak_at = 0, 0.0
    with stderr_path.open("w") as err:
        proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=err, env=env, cwd=cwd, text=True
        )
        # The children print one line at most: it waits in the pipe until they exit.
        while proc.poll() is None:
            hwm = _vm_hwm_kb(proc.pid)
            if hwm > peak_kb:
                # When the peak was reached tells start-up cost from growth along the run.
                peak_kb, peak_at = hwm, time.perf_counter() - start
            if time.perf_counter() - start > timeout:
                proc.kill()
            time.sleep(0.02)
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.stdout.close()
    seconds = time.perf_counter() - start
    return ChildResult(proc.returncode, seconds, peak_kb / 1024, peak_at, out)


def tail(path: Path, lines: int = 3) -> str:
    """The last lines of a child's stderr, to say why it failed."""
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def child_env() -> dict[str, str]:
    """The environment for a provisioner child: the bench key, no PROVISIONER_* overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    env["BRAZE_API_KEY"] = KEY
    env["PYTHONPATH"] = str(ROOT)
    return env
