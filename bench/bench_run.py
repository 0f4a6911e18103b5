"""Measure whole runs against the sandbox (in its own process): throughput, the state
store's cost, and the incremental skip rate.

Run: ``.venv/bin/python bench/bench_run.py [--rows 100000] [--skip-rows 1000000]``.
Prints one line per figure and the ratios; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable without installing

from provisioner import logs
from provisioner.api import run_pipeline
from provisioner.config import Settings, build_settings
from provisioner.identity import RowKey
from provisioner.models import Outcome, Status
from provisioner.state import Prior, QuotaWindow, RunRecord, open_store

KEY = "bench-key"


class NullStore:
    """A state store that remembers nothing: the baseline for the store's cost."""

    path = Path("/dev/null")

    def begin_run(
        self,
        run_id: str,
        manifest: str,
        started_at: float,
        deferred_header: tuple[str, ...] | None,
        settings: Mapping[str, object],
    ) -> None:
        """Nothing to record."""

    def lookup_many(self, workspace: str, keys: Sequence[RowKey]) -> dict[RowKey, Prior]:
        """Nothing is known."""
        return {}

    async def intent(
        self,
        run_id: str,
        workspace: str,
        key: RowKey,
        send_id: str | None,
        line: int,
        *,
        wait: bool = True,
    ) -> None:
        """Nothing to make durable."""

    def record(self, run_id: str, workspace: str, key: RowKey | None, outcome: Outcome) -> None:
        """Nothing to record."""

    async def flush(self) -> None:
        """Nothing pending."""

    async def throttle(self) -> None:
        """Nothing pending."""

    def record_quota(
        self, workspace: str, reset_at: float, limit: int, remaining: int, spent_delta: int
    ) -> None:
        """Nothing to record."""

    def quota_window(self, workspace: str, now: float) -> QuotaWindow | None:
        """No window known."""
        return None

    def finish_run(
        self,
        run_id: str,
        finished_at: float,
        exit_code: int,
        counts: Mapping[str, int],
        summary: Mapping[str, object],
    ) -> None:
        """Nothing to record."""

    def iter_outcomes(self, run_id: str) -> Iterator[Outcome]:
        """No outcomes."""
        return iter(())

    def run_info(self, run_id: str) -> tuple[RunRecord, tuple[str, ...] | None, dict[str, object]]:
        """No runs."""
        raise KeyError(run_id)

    def recent_runs(self, limit: int = 10) -> list[RunRecord]:
        """No runs."""
        return []

    def open_problems(self) -> dict[str, int]:
        """No problems."""
        return {}

    def close(self) -> None:
        """Nothing to close."""


def start_sandbox(*extra: str) -> tuple[subprocess.Popen[str], str]:
    """The sandbox in its own process (its CPU is not the client's); returns (proc, url)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "provisioner",
            "sandbox",
            "--api-key",
            KEY,
            "--daily-quota",
            "1000000000",
            *extra,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def ledger_total(url: str) -> int:
    """Requests the sandbox has answered so far."""
    with urllib.request.urlopen(url + "/sandbox/ledger") as resp:
        return int(orjson.loads(resp.read())["requests"]["total"])


def write_manifest(path: Path, rows: int) -> None:
    """A CSV manifest of distinct campaign/send_id rows."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["campaign_id", "send_id"])
        for i in range(rows):
            writer.writerow([f"c{i:08d}", f"s{i:08d}"])


def settings(url: str, manifest: Path, work: Path, name: str, concurrency: int) -> Settings:
    return build_settings(
        manifest=str(manifest),
        out_dir=work / f"out-{name}",
        cli={
            "base_url": url,
            "rate": 1_000_000.0,
            "concurrency": concurrency,
            "state_path": str(work / f"{name}.sqlite3"),
            "log_level": "warning",
        },
        env={"BRAZE_API_KEY": KEY},
    )


def timed_run(s: Settings, *, null_store: bool = False) -> tuple[float, dict[str, object]]:
    start = time.perf_counter()
    result = asyncio.run(run_pipeline(s, store=NullStore() if null_store else None))
    return time.perf_counter() - start, result.summary


def prepopulate(path: Path, rows: int) -> None:
    """A store in which an earlier run created every row (as a real run records them)."""
    store = open_store(path)

    async def fill() -> None:
        store.begin_run("seed-run", "seed.csv", time.time(), None, {})
        from provisioner.access import ApiKey

        ws = ApiKey(KEY).label
        for i in range(rows):
            cid, sid = f"c{i:08d}", f"s{i:08d}"
            store.record(
                "seed-run",
                ws,
                (cid, "s:" + sid),
                Outcome(i + 2, Status.CREATED, cid, sid, (("campaign_id", cid), ("send_id", sid))),
            )
            if i % 5000 == 0:
                await store.throttle()
        await store.flush()
        store.finish_run("seed-run", time.time(), 0, {"created": rows}, {})

    asyncio.run(fill())
    store.close()


def main() -> int:
    """Print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--skip-rows", type=int, default=1_000_000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    logs.configure("json", "warning")
    proc, url = start_sandbox()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            manifest = work / "m.csv"
            write_manifest(manifest, args.rows)
            t_state, _ = timed_run(settings(url, manifest, work, "state", args.concurrency))
            # A fresh sandbox would forget nothing here: repeats cost the same requests.
            t_null, _ = timed_run(
                settings(url, manifest, work, "null", args.concurrency), null_store=True
            )
            print(
                f"capacity  {args.rows:,} rows, concurrency {args.concurrency}: "
                f"with state {args.rows / t_state:8,.0f} rows/s ({t_state:.1f} s), "
                f"without {args.rows / t_null:8,.0f} rows/s ({t_null:.1f} s), "
                f"ratio {t_null / t_state:.2f}"
            )
            big = work / "big.csv"
            write_manifest(big, args.skip_rows)
            store_path = work / "skip.sqlite3"
            prepopulate(store_path, args.skip_rows)
            before = ledger_total(url)
            s = settings(url, big, work, "skip", args.concurrency)
            s = build_settings(
                manifest=str(big),
                out_dir=work / "out-skip",
                cli={"base_url": url, "state_path": str(store_path), "log_level": "warning"},
                env={"BRAZE_API_KEY": KEY},
            )
            t_skip, summary = timed_run(s)
            sent = ledger_total(url) - before
            counts = summary["counts"]
            assert isinstance(counts, dict)
            print(
                f"skip      {args.skip_rows:,} rows already created: "
                f"{args.skip_rows / t_skip:8,.0f} rows/s ({t_skip:.1f} s), "
                f"skipped {counts['skipped']:,}, requests sent {sent}"
            )
    finally:
        proc.terminate()
        proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
