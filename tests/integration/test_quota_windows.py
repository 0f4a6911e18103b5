"""Quota precision over several short windows: alone, shared with another client, and with
missing or garbled rate-limit headers."""

from __future__ import annotations

import itertools
import math
import time
from collections import Counter
from pathlib import Path

import pytest

from provisioner.api import run_pipeline
from tests.conftest import SandboxFactory

from .helpers import campaigns, settings_for, write_csv

WINDOW = 2
QUOTA = 6


def per_window(at: list[float]) -> Counter[int]:
    """Creations per window index (windows are aligned to the epoch)."""
    return Counter(math.floor(t / WINDOW) for t in at)


async def test_alone_never_more_than_the_quota_per_window_and_no_429(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """Alone on a workspace over ~4 windows: at most the quota per window, zero 429, and
    every full window used to the last unit."""
    sandbox = await sandbox_factory(daily_quota=QUOTA, window_seconds=WINDOW)
    manifest = write_csv(tmp_path / "m.csv", campaigns(QUOTA * 4))
    result = await run_pipeline(settings_for(sandbox.url, tmp_path, manifest, max_wait=5))
    assert result.exit_code == 0
    counts = per_window([e.at for e in sandbox.ledger.created])
    assert max(counts.values()) <= QUOTA
    assert sandbox.ledger.by_status.get("429", 0) == 0
    full = sorted(counts)[1:-1]  # the first and last windows may be partial
    assert all(counts[w] == QUOTA for w in full), counts


@pytest.mark.parametrize(("shared_at", "pace"), [(0.0, "asap"), (0.5, "even")])
async def test_shared_with_another_client_at_most_one_429_per_window(
    sandbox_factory: SandboxFactory, tmp_path: Path, shared_at: float, pace: str
) -> None:
    """Another client takes 2 of every window's 6 (at its start, or mid-window while we
    pace evenly): we adapt from the headers, with at most one 429 per window, and never
    exceed what is left."""
    sandbox = await sandbox_factory(
        daily_quota=QUOTA, window_seconds=WINDOW, shared_consumer=2, shared_at=shared_at
    )
    manifest = write_csv(tmp_path / "m.csv", campaigns(16))
    result = await run_pipeline(
        settings_for(sandbox.url, tmp_path, manifest, max_wait=5, pace=pace)
    )
    assert result.exit_code == 0
    assert result.counts["created"] == 16
    figures = sandbox.ledger.window_figures()
    assert figures
    assert all(w.http_429 <= 1 for w in figures), figures
    assert all(w.ours + w.other <= QUOTA for w in figures), figures


async def test_missing_headers_fall_back_to_the_configured_quota(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """Without X-RateLimit headers the configured default quota is assumed and counted:
    never more creations than it, and the rest deferred."""
    sandbox = await sandbox_factory(daily_quota=100, headers="omit")
    config_quota = 4
    manifest = write_csv(tmp_path / "m.csv", campaigns(10))
    settings = settings_for(sandbox.url, tmp_path, manifest, max_wait=0)
    from dataclasses import replace

    result = await run_pipeline(replace(settings, default_quota=config_quota))
    assert result.counts["created"] == config_quota
    assert result.counts["deferred"] == 10 - config_quota


async def test_garbled_headers_are_tolerated(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """Garbled rate-limit headers (text, negative, a reset in the past) do not crash the run
    or fail rows; the quota is still never exceeded."""
    sandbox = await sandbox_factory(daily_quota=8, headers="garble", seed=7)
    manifest = write_csv(tmp_path / "m.csv", campaigns(12))
    result = await run_pipeline(settings_for(sandbox.url, tmp_path, manifest, max_wait=0))
    assert result.counts["failed"] == 0
    assert len(sandbox.ledger.created) <= 8
    assert result.counts["created"] + result.counts["deferred"] == 12


@pytest.mark.parametrize("reset", ["sliding", "jitter"])
async def test_quota_cap_holds_when_the_reset_moves_forward(
    sandbox_factory: SandboxFactory, tmp_path: Path, reset: str
) -> None:
    """A reset that slides (now + a window) or jitters by a second is the same window:
    --quota 10 lets exactly 10 through and defers the rest."""
    start = time.time()
    ticks = itertools.count()

    def clock() -> float:
        """The sandbox's clock runs a second per reading, so a sliding reset slides."""
        return start + next(ticks)

    sandbox = await sandbox_factory(clock=clock, daily_quota=1000, reset=reset, seed=1)
    manifest = write_csv(tmp_path / "m.csv", campaigns(40))
    settings = settings_for(sandbox.url, tmp_path, manifest, max_wait=0, quota=10)
    result = await run_pipeline(settings)
    assert len(sandbox.ledger.created) == 10
    assert (result.counts["created"], result.counts["deferred"]) == (10, 30)


async def test_a_reset_that_moves_backwards_still_has_its_remaining_obeyed(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """A reset a second earlier at each creation is the same window: its Remaining is
    obeyed, so the server's quota of 20 is never passed and no request meets a 429."""
    sandbox = await sandbox_factory(daily_quota=20, reset="backwards")
    manifest = write_csv(tmp_path / "m.csv", campaigns(40))
    result = await run_pipeline(settings_for(sandbox.url, tmp_path, manifest, max_wait=0))
    assert sandbox.ledger.count(429) == 0
    assert len(sandbox.ledger.created) == 20
    assert (result.counts["created"], result.counts["deferred"]) == (20, 20)
