"""Retention end to end: runs prune at their end, `provisioner prune` by hand, and a
kill -9 in the middle of a prune loses nothing that retention keeps."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson

from provisioner._core.models import Outcome, Status
from provisioner._state.opening import open_store
from provisioner._state.retention import DAY_S
from provisioner.api import run_pipeline
from provisioner.sandbox.server import Sandbox

from .helpers import ROOT, campaigns, outputs, settings_for, write_csv

WS = "ws-main"
NOW = 1_000 * DAY_S
FILES = ("results.jsonl", "failures.jsonl", "deferred.csv", "summary.json")


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "provisioner", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        check=False,
    )


async def test_runs_prune_old_runs_at_their_end_and_skipping_still_works(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """With keep_runs = 2 the third and fourth runs prune the oldest ones at their end; the
    rows the first run created are still skipped, none is sent twice."""
    manifest = write_csv(tmp_path / "m.csv", campaigns(30))
    retention = {"state_keep_days": 0.000001, "state_keep_runs": 2, "campaign_check": False}
    ids = []
    for _ in range(4):
        result = await run_pipeline(settings_for(sandbox.url, tmp_path, manifest, **retention))
        ids.append(result.run_id)
        await asyncio.sleep(0.2)  # older than keep_days (0.09 s) when the next run ends
    assert {s: n for s, n in result.counts.items() if n} == {"skipped": 30}
    results, _failures, _deferred, _summary = outputs(tmp_path / "out")
    assert {r["created_run"] for r in results} == {ids[0]}  # the tombstone still names it
    assert len(sandbox.ledger.created) == 30
    store = open_store(tmp_path / "state.sqlite3", lock=False)
    try:
        pruned = {r.run_id: r.pruned_at is not None for r in store.recent_runs()}
    finally:
        store.close()
    assert pruned == {ids[0]: True, ids[1]: True, ids[2]: False, ids[3]: False}


async def make_store(path: Path, runs: int, rows: int) -> None:
    """``runs`` finished runs, 10 days apart: run 0 creates every row, the others fail them
    (kept a row each: SQLite would hold deferred rows in a block, which one step removes)."""
    for run in range(runs):
        store = open_store(path)
        run_id = f"run-{run}"
        start = NOW - (runs - run) * 10 * DAY_S
        store.begin_run(run_id, "m.csv", start, ("campaign_id", "n"), {})
        status = Status.CREATED if run == 0 else Status.FAILED
        for line in range(1, rows + 1):
            campaign = f"c{line:05d}"
            send_id = f"s{line:05d}" if run == 0 else None
            o = Outcome(line, status, campaign, send_id, (("campaign_id", campaign), ("n", "x")))
            store.record(run_id, WS, (campaign, f"s{line:05d}"), o)
        await store.flush()
        store.finish_run(run_id, start + 1, 3, {status.value: rows}, {"rows_total": rows})
        store.close()


def export_all(path: Path, run_ids: list[str], out: Path) -> dict[str, bytes]:
    store = open_store(path, lock=False)
    try:
        from provisioner._outputs.report import export_run

        files = {}
        for run_id in run_ids:
            export_run(store, run_id, out / run_id)
            for name in FILES:
                files[f"{run_id}/{name}"] = (out / run_id / name).read_bytes()
        return files
    finally:
        store.close()


def test_kill_9_during_a_prune_loses_nothing_retention_keeps(tmp_path: Path) -> None:
    """A prune killed mid-way (small steps) leaves the kept runs' exports byte for byte and
    every created combination; the next prune finishes the job."""
    path = tmp_path / "state.sqlite3"
    runs, rows = 8, 600
    asyncio.run(make_store(path, runs, rows))
    kept = [f"run-{i}" for i in range(runs - 3, runs)]
    before = export_all(path, kept, tmp_path / "before")
    script = textwrap.dedent(f"""
        import os, time
        from pathlib import Path
        from provisioner._state.opening import open_store
        from provisioner._state.retention import Policy
        steps = []
        def progress(run, n):
            print(run, n, flush=True)
            steps.append(n)
            if len(steps) == 20:  # into the second run's steps: wait there for the kill
                time.sleep(600)
        store = open_store(Path(os.environ["STATE"]))
        store.prune(Policy(1, 3), now={NOW}, step_rows=20, progress=progress)
        print("done", flush=True)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STATE": str(path)}
    child = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    # Run 0's creations are kept (later skips refer to them): its steps are few.
    lines = [child.stdout.readline() for _ in range(20)]  # into the second run's steps
    assert lines[-1].startswith("run-1 ")
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert export_all(path, kept, tmp_path / "after") == before
    store = open_store(path, lock=False)
    try:
        keys = [(f"c{line:05d}", f"s{line:05d}") for line in range(1, rows + 1)]
        found = store.lookup_many(WS, keys)
        assert len(found) == rows
        assert {p.kind for p in found.values()} == {"created"}
        marked = sorted(r.run_id for r in store.recent_runs(100) if r.pruned_at is not None)
        assert marked[:2] == ["run-0", "run-1"]
    finally:
        store.close()
    done = cli("prune", "--state", str(path), "--keep-days", "0", "--json")
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["rows"] > 0  # the killed prune's rest
    assert export_all(path, kept, tmp_path / "end") == before


async def test_prune_command_dry_run_then_prune_then_busy(tmp_path: Path) -> None:
    """`provisioner prune --dry-run` names what would go and removes nothing; `prune`
    removes it and says the sizes; while a run holds the store it exits 75."""
    path = tmp_path / "state.sqlite3"
    await make_store(path, 4, 200)
    config = tmp_path / "c.toml"
    config.write_text(f'[state]\npath = "{path}"\nkeep_days = 5\nkeep_runs = 1\n')
    dry = cli("prune", "--config", str(config), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    # 400: run 0's 200 creations stay (SQLite: later runs' skipped rows refer to them).
    assert dry.stdout.startswith(
        "provisioner: would prune 3 run(s) (run-0, run-1, run-2), 400 rows; store now"
    )
    assert "retention: runs older than 5 days beyond the last 1" in dry.stdout
    done = cli("prune", "--config", str(config), "--json")
    report = orjson.loads(done.stdout)
    assert report["runs"] == ["run-0", "run-1", "run-2"]
    assert report["rows"] == 400
    assert report["bytes_after"] < report["bytes_before"]
    again = cli("prune", "--config", str(config))
    assert again.stdout.startswith("provisioner: pruned 0 run(s), 0 rows")
    holder = open_store(path)
    try:
        busy = cli("prune", "--state", str(path))
    finally:
        holder.close()
    assert busy.returncode == 75
    assert "in use by another run" in busy.stderr
    exported = cli("export", "--run", "run-0", "--out", str(tmp_path / "x"), "--state", str(path))
    assert exported.returncode == 2
    assert exported.stderr.count("\n") == 1
    assert "was pruned" in exported.stderr
