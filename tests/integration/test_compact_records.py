"""`export --run` writes a run's own four files again, whatever form the store keeps its
rows in (skipped rows as references to their creation, deferred rows in compressed
blocks), for runs mixing every status."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import orjson

from provisioner._state import codec, schema
from provisioner._state.opening import open_store
from provisioner.api import run_pipeline
from provisioner.sandbox.server import FaultRule
from tests.conftest import SandboxFactory

from .helpers import outputs, settings_for, write_csv
from .test_filesystem import export

_HEADER = ("campaign_id", "send_id", "note")


def _by_line(data: bytes) -> bytes:
    """A JSONL file's lines in line order: the order export writes them in."""
    keyed = [(int(orjson.loads(raw)["line"]), raw) for raw in data.splitlines(keepends=True)]
    keyed.sort(key=lambda pair: pair[0])
    return b"".join(raw for _, raw in keyed)


async def assert_export_matches(where: Path, out: Path, run_id: str) -> None:
    """The export of ``run_id`` (store ``where/state.sqlite3``) is byte for byte the run's
    own files in ``out``, their lines in line order (the run writes them as they finish);
    deferred.csv has the same header and rows; the summary is the stored one."""
    again = where / f"export-{run_id}"
    shutil.rmtree(again, ignore_errors=True)
    await export(where, run_id, again)
    for name in ("results.jsonl", "failures.jsonl"):
        assert (again / name).read_bytes() == _by_line((out / name).read_bytes()), name
    deferred, original = ((d / "deferred.csv").read_bytes() for d in (again, out))
    assert deferred.splitlines()[:1] == original.splitlines()[:1]  # the same header
    assert sorted(deferred.splitlines()) == sorted(original.splitlines())
    summary, stored = (orjson.loads((d / "summary.json").read_bytes()) for d in (again, out))
    assert summary.pop("files").keys() == stored.pop("files").keys()
    assert summary == stored


def _first_rows() -> list[tuple[str, str, str]]:
    rows = [(f"c{i:06d}", f"s{i:06d}", f"note {i}") for i in range(700)]
    rows += [(f"n{i:06d}", "", f"plain {i}") for i in range(30)]  # no send_id: n:1 keys
    rows += [("n000000", "", "a second occurrence"), ("bad000", "s1", "x"), ("d000000", "", "")]
    return rows


def _second_rows(first: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    for i, (cid, sid, note) in enumerate(first):
        # Most rows as created; some with a changed pass-through value (still skipped).
        rows.append((cid, sid, note if i % 17 else note + " changed"))
        if i % 9 == 4:
            rows.append((cid, sid, "a repeat"))  # a duplicate of a skipped row
        if i % 5 == 2:
            rows.append((f"x{i:06d}", f"t{i:06d}", f"new {i}"))  # new: sent or deferred
        if i % 23 == 7:
            rows.append(("", "x", "invalid"))
    return rows


async def test_export_writes_each_runs_own_files(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """Two runs over one store (created, failed, in doubt, then skipped with equal and
    changed columns, duplicates, new, deferred by quota, invalid rows): export of each
    writes its own files again, byte for byte in line order."""
    sandbox = await sandbox_factory(daily_quota=100_000)
    sandbox.add_faults(
        [
            FaultRule(action="drop_after", times=1, campaign_id="d000000"),
            FaultRule(action="status", status=400, campaign_id="bad000"),
        ]
    )
    first = _first_rows()
    one = tmp_path / "one"
    one.mkdir()
    manifest = write_csv(one / "m.csv", first, header=_HEADER)
    store = str(tmp_path / "state.sqlite3")
    r1 = await run_pipeline(settings_for(sandbox.url, one, manifest, state_path=store))
    assert r1.exit_code == 1
    two = tmp_path / "two"
    two.mkdir()
    manifest = write_csv(two / "m.csv", _second_rows(first), header=_HEADER)
    r2 = await run_pipeline(
        settings_for(sandbox.url, two, manifest, state_path=store, quota=780, max_wait=0)
    )
    assert r2.exit_code == 1
    results, failures, deferred, summary = outputs(two / "out")
    counts = summary["counts"]
    assert counts["skipped"] > 600
    assert counts["duplicate"] > 50
    assert counts["deferred"] > 50
    assert counts["created"] > 0
    assert counts["failed"] > 0
    assert any(r["status"] == "skipped" and r["note"].endswith("changed") for r in results)
    assert deferred
    assert failures
    for out, run_id in ((one / "out", r1.run_id), (two / "out", r2.run_id)):
        await assert_export_matches(tmp_path, out, run_id)


def downgrade_to_v1(path: Path) -> None:
    """Rewrite a store as schema version 1 left it: every outcome a plain row (created ones
    without created_at), no blocks table, no created.line, no runs.pruned_at."""
    store = open_store(path, lock=False)
    try:
        runs = {r.run_id: seq for seq, r in enumerate(reversed(store.recent_runs(100)), 1)}
        blocked = [
            codec.encode_outcome(seq, "ws", None, o, runs)
            for run_id, seq in runs.items()
            for o in store.iter_outcomes(run_id)
            if o.status.value in ("skipped", "deferred")
        ]
    finally:
        store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.execute("UPDATE outcomes SET created_at = NULL WHERE status = 'created'")
        conn.executemany(schema.SQL_OUTCOME, blocked)  # OR REPLACE: plain ones stay alike
        conn.execute("DROP TABLE blocks")
        conn.execute("ALTER TABLE created DROP COLUMN line")
        conn.execute("ALTER TABLE runs DROP COLUMN pruned_at")  # version 2 (retention)
        conn.execute("PRAGMA user_version = 1")
        conn.execute("COMMIT")
    finally:
        conn.close()


async def test_a_version_1_store_migrates_and_exports_the_same(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """A store written by schema version 1 (every row a full copy) is migrated: export of
    its runs writes the same files, and the next skip run over it stores references."""
    sandbox = await sandbox_factory(daily_quota=100_000)
    sandbox.add_faults(
        [
            FaultRule(action="drop_after", times=1, campaign_id="d000000"),
            FaultRule(action="status", status=400, campaign_id="bad000"),
        ]
    )
    first = _first_rows()
    one = tmp_path / "one"
    one.mkdir()
    manifest = write_csv(one / "m.csv", first, header=_HEADER)
    store = tmp_path / "state.sqlite3"
    r1 = await run_pipeline(settings_for(sandbox.url, one, manifest, state_path=str(store)))
    two = tmp_path / "two"
    two.mkdir()
    again = write_csv(two / "m.csv", _second_rows(first), header=_HEADER)
    r2 = await run_pipeline(
        settings_for(sandbox.url, two, again, state_path=str(store), quota=780, max_wait=0)
    )
    downgrade_to_v1(store)
    for out, run_id in ((one / "out", r1.run_id), (two / "out", r2.run_id)):
        await assert_export_matches(tmp_path, out, run_id)
    conn = sqlite3.connect(store)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (schema.schema_version(),)
        # Every creation found its outcome's line.
        assert conn.execute("SELECT count(*) FROM created WHERE line IS NULL").fetchone() == (0,)
    finally:
        conn.close()
    three = tmp_path / "three"
    three.mkdir()
    r3 = await run_pipeline(settings_for(sandbox.url, three, manifest, state_path=str(store)))
    assert r3.counts["skipped"] == len(first) - 2  # all but the failed and in-doubt rows
    conn = sqlite3.connect(store)
    try:
        plain = conn.execute(
            "SELECT count(*) FROM outcomes WHERE run_seq = 3 AND status = 'skipped'"
        ).fetchone()
        refs = conn.execute(
            "SELECT sum(rows) FROM blocks WHERE run_seq = 3 AND kind = 'skipped'"
        ).fetchone()
    finally:
        conn.close()
    assert (plain, refs) == ((0,), (r3.counts["skipped"],))
    await assert_export_matches(tmp_path, three / "out", r3.run_id)
