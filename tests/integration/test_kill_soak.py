"""The kill loop: many SIGKILL (and some SIGTERM) at random moments under faults and a
binding quota, with the store in SQLite or in PostgreSQL, then the promises checked
against the sandbox's ledger. The heavy variants run under ``make test-slow``; a few
kills on PostgreSQL run by default."""

from __future__ import annotations

import asyncio
import random
import signal
from collections import Counter
from pathlib import Path

import pytest

from provisioner.sandbox.server import FaultRule
from tests.conftest import SandboxFactory

from .helpers import assert_invariant, campaigns, outputs, sending, start_cli, write_csv
from .test_cli import provisioner, run_args
from .test_compact_records import assert_export_matches

QUOTA = 80  # per 1 s window: below --rate, so pauses for the quota happen between kills
CONCURRENCY = 16
LEASE_S = 2  # PostgreSQL: a killed run's lease holds the next one off this long (exit 75)


def state_of(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if backend == "postgresql":
        return str(request.getfixturevalue("pg_url")) + f"?lease_s={LEASE_S}"
    return str(tmp_path / "state.sqlite3")


async def kill_loop(
    sandbox_factory: SandboxFactory, tmp_path: Path, state: str, kills_wanted: int, rows: int
) -> dict[str, int]:
    """Start, kill, start again until ``kills_wanted`` signals landed, finish the work,
    check everything; returns the counts."""
    faults = (
        FaultRule(action="status", status=503, probability=0.08),
        FaultRule(action="drop_before", probability=0.02),
        FaultRule(action="drop_after", probability=0.02),
    )
    sandbox = await sandbox_factory(
        daily_quota=QUOTA, window_seconds=1, latency_ms=2, faults=faults, seed=7,
        repeat_counts=True,
    )  # fmt: skip
    with_id, without_id = rows * 3 // 4, rows // 4
    known, unknown = campaigns(with_id), campaigns(without_id, with_send_id=False, prefix="n")
    # Three rows with a send_id, then one without, all along: a kill lands while rows of
    # both kinds are in flight (placed after the others, the kills never reached them).
    manifest_rows = [
        row
        for four in zip(known[::3], known[1::3], known[2::3], unknown, strict=True)
        for row in four
    ]
    manifest = write_csv(tmp_path / "m.csv", manifest_rows)
    rng = random.Random(20261126)
    args = [
        *run_args(sandbox.url, tmp_path, str(manifest)), "--state", state,
        "--concurrency", str(CONCURRENCY), "--rate", "250",
    ]  # fmt: skip
    kills = terms = starts = held_off = stopped = interrupted = 0
    while kills + terms < kills_wanted:
        before = len(sandbox.ledger.created)
        proc = await start_cli(*args, quiet=True)
        starts += 1
        # A random moment after this start's first creation: a delay from the start alone
        # can end before the first request on a busy machine, and interrupt nothing.
        interrupts = await sending(sandbox, proc, before)
        await asyncio.sleep(rng.uniform(0.0, 0.5))
        if proc.returncode is None:
            graceful = rng.random() < 0.2
            proc.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
            terms, kills = terms + graceful, kills + (not graceful)
            interrupted += interrupts
        code = await proc.wait()
        if code == 75:  # the killed run's lease had not expired yet (PostgreSQL)
            held_off += 1
            await asyncio.sleep(0.2)
            continue
        if code == 2:  # a lease not renewed in time on a busy machine: it stopped itself
            stopped += 1
            continue
        # -15: the SIGTERM came before start-up installed the handler (nothing sent yet).
        if code not in (-signal.SIGKILL, -signal.SIGTERM, 143):
            assert code in (0, 1, 3), code
            break  # the work finished before the signal
    assert kills + terms >= kills_wanted // 2, (kills, terms)  # the work may end sooner
    assert interrupted == kills + terms  # every signal landed while its run was sending
    created_by_interrupted = len(sandbox.ledger.created)
    code = 3
    while code in (2, 3, 75):  # deferred by the quota, or held off: the next run goes on
        if code == 75:
            await asyncio.sleep(0.3)
        code, _, err = await provisioner(*args)
        starts += 1
    assert code in (0, 1), err
    results, failures, deferred, summary = outputs(tmp_path / "out")
    assert_invariant(tmp_path / "out", len(manifest_rows))
    assert not deferred
    # Only send_id-less rows may end in doubt (a dropped answer or a kill mid-request);
    # a row may also fail retryably when 503s outlast its retries (they created nothing).
    assert {f["error"] for f in failures} <= {"in_doubt", "server_error"}
    doubt = {f["campaign_id"] for f in failures if f["error"] == "in_doubt"}
    assert all(c.startswith("n") for c in doubt)
    created = sandbox.ledger.created
    per_campaign = Counter(e.campaign_id for e in created)
    # Never a second id for a row without one.
    assert all(n == 1 for c, n in per_campaign.items() if c.startswith("n"))
    # A combination with a send_id is created again only when a request of it was in
    # flight at a kill or lost its answer: never what the store held as created.
    repeats = sum(n - 1 for c, n in per_campaign.items() if c.startswith("c"))
    interruptions = kills + terms + stopped
    assert repeats <= interruptions * CONCURRENCY + sandbox.ledger.count("dropped"), repeats
    ledger = {e.campaign_id: e.send_id for e in created}
    reported = {r["campaign_id"]: r["send_id"] for r in results}
    assert all(ledger[c] == s for c, s in reported.items())
    assert set(ledger) <= set(reported) | doubt
    # The quota: the sandbox refuses past it, so the count of 429s is what the tool spent
    # blind. Spend is recorded across runs; only a start after a kill can meet one.
    http_429 = sum(w.http_429 for w in sandbox.ledger.window_figures())
    assert http_429 <= starts, (http_429, starts)
    assert summary["rows_total"] == len(manifest_rows)
    if "://" not in state:  # the SQLite store's compact records (skips, blocks) export it
        await assert_export_matches(tmp_path, tmp_path / "out", summary["run_id"])
    counts = {
        "kills": kills, "terms": terms, "starts": starts, "held_off": held_off,
        "lease_stops": stopped, "rows": len(manifest_rows), "in_doubt": len(doubt),
        "failed_retryable": len(failures) - len(doubt),
        "ledger_repeats": repeats, "ledger_creations": len(created),
        "signals_while_sending": interrupted, "created_before_the_last_run": created_by_interrupted,
        "in_doubt_seen_by_server": len(doubt & {e.campaign_id for e in created}),
    }  # fmt: skip
    print(f"kill loop ({state.split('?')[0].split(':')[0]}): {counts}")
    return counts


@pytest.mark.slow
# Each signal waits for its run's first creation, and on PostgreSQL the next start for the
# killed run's lease: dozens of them outlast the suite's default 120 s.
@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    ("backend", "kills", "rows"), [("sqlite", 80, 3200), ("postgresql", 32, 4800)]
)
async def test_kills_faults_and_quota_together_lose_nothing(
    backend: str, kills: int, rows: int, request: pytest.FixtureRequest,
    sandbox_factory: SandboxFactory, tmp_path: Path,
) -> None:  # fmt: skip
    """Dozens of SIGKILL/SIGTERM at random moments under 5xx, dropped connections and a
    binding quota: every row in one file, no send_id-less row created twice, no
    combination created again beyond what was in flight, every creation reported, and
    at most one 429 per process start."""
    state = state_of(backend, request, tmp_path)
    await kill_loop(sandbox_factory, tmp_path, state, kills, rows)


async def test_a_few_kills_with_the_store_in_postgresql_lose_nothing(
    request: pytest.FixtureRequest, sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """The kill loop's checks after three kills with the store in PostgreSQL."""
    state = state_of("postgresql", request, tmp_path)
    counts = await kill_loop(sandbox_factory, tmp_path, state, 3, 400)
    assert counts["kills"] + counts["terms"] >= 1
