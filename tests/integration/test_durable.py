"""Durable state end to end: incremental runs, resume after kill -9, the lock, export."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from provisioner._state.opening import open_store
from provisioner._state.schema import APPLICATION_ID
from provisioner.api import run_pipeline
from provisioner.sandbox.server import FaultRule, Sandbox
from tests.conftest import SandboxFactory

from .helpers import (
    assert_invariant,
    campaigns,
    outputs,
    sending,
    settings_for,
    start_cli,
    write_csv,
)
from .test_cli import provisioner, run_args
from .test_compact_records import assert_export_matches


async def test_second_run_sends_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    """Incremental: rows created by an earlier run are skipped, zero requests sent."""
    manifest = write_csv(
        tmp_path / "m.csv", [*campaigns(30), *campaigns(10, with_send_id=False, prefix="n")]
    )
    first = await run_pipeline(settings_for(sandbox.url, tmp_path, manifest))
    assert first.exit_code == 0
    total = sandbox.ledger.total
    second = await run_pipeline(settings_for(sandbox.url, tmp_path, manifest))
    assert second.exit_code == 0
    assert sandbox.ledger.total == total  # not one request
    results, _, _, summary = outputs(tmp_path / "out")
    assert summary["counts"]["skipped"] == 40
    assert {r["created_run"] for r in results} == {first.run_id}
    ledger_ids = {e.send_id for e in sandbox.ledger.created}
    assert {r["send_id"] for r in results} == ledger_ids  # skipped rows name what was created


async def test_force_sends_again(sandbox: Sandbox, tmp_path: Path) -> None:
    """--force sends rows that earlier runs created (documented as spending quota)."""
    manifest = write_csv(tmp_path / "m.csv", campaigns(5))
    await run_pipeline(settings_for(sandbox.url, tmp_path, manifest))
    total = sandbox.ledger.total
    await run_pipeline(settings_for(sandbox.url, tmp_path, manifest, force=True))
    assert sandbox.ledger.total == total + 5


async def test_new_rows_only_are_sent(sandbox: Sandbox, tmp_path: Path) -> None:
    """A manifest that grew: only the appended rows are sent."""
    write_csv(tmp_path / "m.csv", campaigns(5))
    await run_pipeline(settings_for(sandbox.url, tmp_path, tmp_path / "m.csv"))
    write_csv(tmp_path / "m.csv", campaigns(8))
    result = await run_pipeline(settings_for(sandbox.url, tmp_path, tmp_path / "m.csv"))
    assert result.summary["counts"]["created"] == 3
    assert result.summary["counts"]["skipped"] == 5


async def test_in_doubt_row_is_not_resent_next_run(sandbox: Sandbox, tmp_path: Path) -> None:
    """A row in doubt stays in doubt on the next run unless --retry-in-doubt."""
    sandbox.add_faults([FaultRule(action="drop_after", times=1)])
    manifest = write_csv(tmp_path / "m.csv", campaigns(1, with_send_id=False))
    await run_pipeline(settings_for(sandbox.url, tmp_path, manifest))
    total = sandbox.ledger.total
    again = await run_pipeline(settings_for(sandbox.url, tmp_path, manifest))
    assert again.exit_code == 1
    assert sandbox.ledger.total == total
    _, failures, _, _ = outputs(tmp_path / "out")
    assert failures[0]["error"] == "in_doubt"
    assert "earlier run" in failures[0]["message"]
    retried = await run_pipeline(settings_for(sandbox.url, tmp_path, manifest, retry_in_doubt=True))
    assert retried.exit_code == 0
    assert sandbox.ledger.total == total + 1


async def test_derived_send_ids_are_stable_and_never_in_doubt(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """--derive-send-ids: valid, stable ids; a dropped answer is retried, not in doubt."""
    sandbox.add_faults([FaultRule(action="drop_after", times=2)])
    manifest = write_csv(tmp_path / "m.csv", campaigns(6, with_send_id=False))
    first = await run_pipeline(settings_for(sandbox.url, tmp_path, manifest, derive_send_ids="mig"))
    assert first.exit_code == 0
    results, *_ = outputs(tmp_path / "out")
    ids = sorted(r["send_id"] for r in results)
    assert all(i.startswith("mig-") and i.isascii() and len(i) <= 64 for i in ids)
    assert len(sandbox.ledger.created) == 6
    # A fresh store, the same manifest: the same ids are derived.
    other = tmp_path / "again"
    other.mkdir()
    await run_pipeline(settings_for(sandbox.url, other, manifest, derive_send_ids="mig"))
    again, *_ = outputs(other / "out")
    assert sorted(r["send_id"] for r in again) == ids
    assert len(sandbox.ledger.created) == 6  # repeats of known combinations


async def test_export_reproduces_the_output_files(sandbox: Sandbox, tmp_path: Path) -> None:
    """`provisioner export` writes the run's four files again: the same lines (in line order
    rather than completion order) and the same summary."""
    sandbox.add_faults([FaultRule(action="status", status=400, campaign_id="c000001")])
    manifest = write_csv(tmp_path / "m.csv", [*campaigns(6), ("", "x"), ("c000002", "s000002")])
    result = await run_pipeline(settings_for(sandbox.url, tmp_path, manifest, quota=4, max_wait=0))
    code, _, err = await provisioner(
        "export",
        "--run",
        result.run_id,
        "--out",
        str(tmp_path / "again"),
        "--state",
        str(tmp_path / "state.sqlite3"),
    )
    assert code == 0, err
    for name in ("results.jsonl", "failures.jsonl", "deferred.csv"):
        again = (tmp_path / "again" / name).read_bytes().splitlines()
        original = (tmp_path / "out" / name).read_bytes().splitlines()
        assert sorted(again) == sorted(original)
        assert again[0] == original[0] or name != "deferred.csv"  # the same header
    again_summary = orjson.loads((tmp_path / "again" / "summary.json").read_bytes())
    original_summary = orjson.loads((tmp_path / "out" / "summary.json").read_bytes())
    # The same summary, but `files` describes the files export wrote (in line order).
    assert again_summary.pop("files").keys() == original_summary.pop("files").keys()
    assert again_summary == original_summary


async def test_status_lists_runs_quota_and_problems(sandbox: Sandbox, tmp_path: Path) -> None:
    """`provisioner status --json`: runs with counts and exit codes, quota, open problems."""
    sandbox.add_faults([FaultRule(action="drop_after", campaign_id="n000000")])
    manifest = write_csv(tmp_path / "m.csv", [*campaigns(3), ("n000000", "")])
    result = await run_pipeline(settings_for(sandbox.url, tmp_path, manifest))
    code, out, err = await provisioner(
        "status", "--json", "--state", str(tmp_path / "state.sqlite3")
    )
    assert code == 0, err
    report = orjson.loads(out)
    assert report["runs"][0]["run_id"] == result.run_id
    assert report["runs"][0]["exit_code"] == 1
    assert report["quota"][0]["spent_by_provisioner"] >= 3
    assert report["problems"]["in_doubt"] == 1
    code, text, _ = await provisioner("status", "--state", str(tmp_path / "state.sqlite3"))
    assert code == 0
    assert result.run_id in text
    assert "in doubt: 1" in text


async def test_second_live_run_exits_75(sandbox_factory: SandboxFactory, tmp_path: Path) -> None:
    """A run against a store that a live run holds exits 75 naming the holder's pid, and
    sends nothing."""
    sandbox = await sandbox_factory(latency_ms=200, daily_quota=1000)
    manifest = write_csv(tmp_path / "m.csv", campaigns(200))
    first = await start_cli(
        *run_args(sandbox.url, tmp_path, str(manifest)), "--concurrency", "2", quiet=True
    )
    try:
        for _ in range(100):
            if sandbox.ledger.total:
                break
            await asyncio.sleep(0.05)
        other = tmp_path / "other"
        other.mkdir()
        # The second run talks to its own sandbox, so that "nothing sent" is its own count.
        second = await sandbox_factory()
        code, _, err = await provisioner(
            *run_args(second.url, other, str(manifest)), "--state", str(tmp_path / "state.sqlite3")
        )
        assert code == 75
        assert str(first.pid) in err
        assert "Traceback" not in err
        assert second.ledger.total == 0
        assert not (other / "out" / "results.jsonl").exists()
    finally:
        first.kill()
        await first.wait()


async def test_stale_lock_is_taken_over(sandbox: Sandbox, tmp_path: Path) -> None:
    """After kill -9 the lock file remains; the next run takes it over and finishes."""
    manifest = write_csv(tmp_path / "m.csv", campaigns(3))
    lock = tmp_path / "state.sqlite3.lock"
    lock.write_text("pid=999999\nstarted=2026-01-01T00:00:00Z\n")
    code, _, err = await provisioner(*run_args(sandbox.url, tmp_path, str(manifest)))
    assert code == 0, err


def _sqlite_file(path: Path, *statements: str) -> None:
    conn = sqlite3.connect(path)
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()


def _valid_store(path: Path) -> None:
    open_store(path).close()


def _wal_is_a_directory(path: Path) -> None:
    _valid_store(path)
    path.with_name(path.name + "-wal").mkdir()


def _truncated(path: Path) -> None:
    _valid_store(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 100])


# Each: how to spoil the store at `path`, and a fragment the one-line error must contain.
CORRUPT_STORES: dict[str, tuple[Callable[[Path], object], str]] = {
    "random_bytes": (lambda p: p.write_bytes(os.urandom(4096)), "corrupt or not a SQLite"),
    "zeros": (lambda p: p.write_bytes(b"\0" * 8192), "corrupt or not a SQLite"),
    "text_file": (lambda p: p.write_text("campaign_id,send_id\nc1,s1\n" * 50), "corrupt"),
    "truncated": (_truncated, "corrupt"),
    "another_application": (
        lambda p: _sqlite_file(p, "CREATE TABLE notes (x)", "PRAGMA application_id = 42"),
        "another application",
    ),
    "foreign_sqlite_without_id": (
        lambda p: _sqlite_file(p, "CREATE TABLE notes (x)"),
        "another application",
    ),
    "newer_schema": (
        lambda p: _sqlite_file(
            p, f"PRAGMA application_id = {APPLICATION_ID}", "PRAGMA user_version = 999"
        ),
        "newer",
    ),
    "directory": (lambda p: p.mkdir(), "is a directory"),
    "wal_is_a_directory": (_wal_is_a_directory, "state.sqlite3"),
    "lock_is_a_directory": (
        lambda p: p.with_name(p.name + ".lock").mkdir(),
        "state.sqlite3.lock",
    ),
    "parent_is_a_file": (lambda p: None, "state.sqlite3"),
}


# The rest run with `make test-slow`: each is one more CLI start (~0.5 s).
_QUICK_STORES = {"random_bytes", "truncated", "another_application", "directory",
                 "wal_is_a_directory"}  # fmt: skip


@pytest.mark.parametrize(
    "variant",
    [v if v in _QUICK_STORES else pytest.param(v, marks=pytest.mark.slow)
     for v in sorted(CORRUPT_STORES)],
)  # fmt: skip
async def test_corrupt_store_is_a_clear_error(
    sandbox: Sandbox, tmp_path: Path, variant: str
) -> None:
    """A state store that is corrupt, truncated, foreign, newer, a folder, or whose WAL or
    lock cannot be used: exit 2, one line naming it and the fix, nothing sent."""
    manifest = write_csv(tmp_path / "m.csv", campaigns(3))
    spoil, expected = CORRUPT_STORES[variant]
    state = tmp_path / "state.sqlite3"
    if variant == "parent_is_a_file":
        (tmp_path / "blocker").write_text("x")
        state = tmp_path / "blocker" / "state.sqlite3"
    spoil(state)
    args = run_args(sandbox.url, tmp_path, str(manifest))
    code, _, err = await provisioner(*args, "--state", str(state))
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("provisioner: error:")]
    assert len(errors) == 1, err
    assert expected in errors[0]
    assert str(state.name) in errors[0]
    assert "--state PATH" in errors[0] or "move it aside" in errors[0] or "upgrade" in errors[0]
    assert sandbox.ledger.total == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads and writes whatever the mode says")
async def test_unreadable_store_is_a_clear_error(sandbox: Sandbox, tmp_path: Path) -> None:
    """A store without read permission: exit 2 naming it and the fix, nothing sent."""
    manifest = write_csv(tmp_path / "m.csv", campaigns(3))
    state = tmp_path / "state.sqlite3"
    _valid_store(state)
    state.chmod(0)
    try:
        code, _, err = await provisioner(*run_args(sandbox.url, tmp_path, str(manifest)))
    finally:
        state.chmod(0o600)
    assert code == 2, err
    assert "state.sqlite3" in err
    assert "Traceback" not in err
    assert sandbox.ledger.total == 0


async def test_garbage_wal_is_ignored_and_nothing_is_sent_twice(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """A WAL file full of garbage (no valid frame) is discarded by SQLite's recovery: the
    committed store is intact, so the next run skips every row and sends nothing."""
    manifest = write_csv(tmp_path / "m.csv", campaigns(4))
    code, _, err = await provisioner(*run_args(sandbox.url, tmp_path, str(manifest)))
    assert code == 0, err
    total = sandbox.ledger.total
    (tmp_path / "state.sqlite3-wal").write_bytes(os.urandom(64 * 1024))
    code, _, err = await provisioner(*run_args(sandbox.url, tmp_path, str(manifest)))
    assert code == 0, err
    assert sandbox.ledger.total == total
    _, _, _, summary = outputs(tmp_path / "out")
    assert summary["counts"]["skipped"] == 4


@pytest.mark.parametrize(
    ("target", "with_id", "without_id"),
    [(6, 400, 200), pytest.param(22, 1600, 800, marks=pytest.mark.slow)],
    ids=["6-kills", "22-kills"],
)
async def test_kill_9_loop_loses_nothing_and_creates_nothing_twice(
    sandbox_factory: SandboxFactory, tmp_path: Path, target: int, with_id: int, without_id: int
) -> None:
    """kill -9 at random moments of a run that is sending (6 times; 22 in the slow variant),
    then finish: every row accounted exactly once, no known combination created twice, rows
    in doubt reported and never resent."""
    sandbox = await sandbox_factory(latency_ms=3, daily_quota=1_000_000)
    known, unknown = campaigns(with_id), campaigns(without_id, with_send_id=False, prefix="n")
    # Two rows with a send_id, then one without, all along: the kills land while rows of
    # both kinds are in flight (placed after the others, no kill reached the rows without).
    rows = [row for three in zip(known[::2], known[1::2], unknown, strict=True) for row in three]
    manifest = write_csv(tmp_path / "m.csv", rows)
    rng = random.Random(20261126)
    # A pace slow enough that the kills land while work remains.
    args = [*run_args(sandbox.url, tmp_path, str(manifest)), "--concurrency", "16", "--rate", "150"]
    # Retention by count alone: every run that gets to its end prunes the killed ones (their
    # intents, so the rows in doubt, must survive it).
    args += ["--keep-days", "0.000001", "--keep-runs", "1"]
    kills = interrupted = 0
    while kills < target:
        before = len(sandbox.ledger.created)
        proc = await start_cli(*args, quiet=True)
        # The kill comes at a random moment after this start's first creation, so it
        # interrupts requests (the delay is not a time the test asserts).
        interrupts = await sending(sandbox, proc, before)
        await asyncio.sleep(rng.uniform(0.0, 0.4))
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
            interrupted += interrupts
        await proc.wait()
        if proc.returncode != -signal.SIGKILL:
            break  # the work finished before we could kill it
    assert kills >= target - 2
    assert interrupted == kills  # every kill landed while its run was sending
    created_by_killed = len(sandbox.ledger.created)
    code, _, err = await provisioner(*args)
    assert code in (0, 1), err
    results, failures, deferred, summary = outputs(tmp_path / "out")
    assert_invariant(tmp_path / "out", len(rows))
    assert not deferred
    assert {f["error"] for f in failures} <= {"in_doubt"}
    # No combination created twice: one ledger entry per campaign row at most.
    per_campaign = Counter(e.campaign_id for e in sandbox.ledger.created)
    assert max(per_campaign.values()) == 1
    # Every created combination is reported: as created/skipped, or as in doubt.
    reported = {r["campaign_id"] for r in results} | {f["campaign_id"] for f in failures}
    assert set(per_campaign) <= reported
    # Rows in doubt were never resent: at most one request for them ever reached the ledger.
    in_doubt = {f["campaign_id"] for f in failures}
    assert all(c.startswith("n") for c in in_doubt)
    seen = {e.campaign_id for e in sandbox.ledger.created}
    print(
        f"kill loop: {kills} kills, {created_by_killed} rows created by the killed runs, "
        f"{len(in_doubt)} in doubt, {len(in_doubt & seen)} of them seen by the server"
    )
    ok = {r["campaign_id"]: r["send_id"] for r in results}
    ledger = {e.campaign_id: e.send_id for e in sandbox.ledger.created}
    assert all(ledger[c] == s for c, s in ok.items())  # reported ids are the created ones
    assert summary["rows_total"] == len(rows)
    # The store's compact records of that run (skipped rows, blocks) export its files.
    await assert_export_matches(tmp_path, tmp_path / "out", summary["run_id"])


async def test_validate_forecasts_without_sending(sandbox: Sandbox, tmp_path: Path) -> None:
    """`provisioner validate`: invalid rows, duplicates, rows done, to send and windows
    needed (quota 4 per window), with nothing sent; exit 1 because of the invalid row."""
    write_csv(tmp_path / "m.csv", campaigns(3))
    await run_pipeline(settings_for(sandbox.url, tmp_path, tmp_path / "m.csv"))
    total = sandbox.ledger.total
    write_csv(tmp_path / "m.csv", [*campaigns(12), ("", "x"), ("c000001", "s000001")])
    code, out, err = await provisioner(
        "validate", str(tmp_path / "m.csv"), "--state", str(tmp_path / "state.sqlite3"),
        "--quota", "4", "--json",
    )  # fmt: skip
    assert code == 1, err
    report = orjson.loads(out)
    assert report["rows"] == 14
    assert report["invalid"] == 1
    assert report["invalid_examples"] == ["line 14: empty_field"]
    assert report["duplicates"] == 1
    assert report["already_provisioned"] == 3
    assert report["to_send"] == 9
    # the first run's window knows 97 left; the cap of 4 per window leaves 1 in this one
    assert report["workspaces"][0]["windows_needed"] == 3
    assert sandbox.ledger.total == total  # nothing sent
    clean = write_csv(tmp_path / "clean.csv", campaigns(2))
    code, text, _ = await provisioner(
        "validate", str(clean), "--state", str(tmp_path / "state.sqlite3")
    )
    assert code == 0
    assert "already provisioned: 2" in text
