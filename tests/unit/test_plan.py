"""The quota plan's arithmetic, checked against a window-by-window simulation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisioner._pipeline.plan import finishes_at, plan, quota_needed

NOW = datetime(2026, 12, 4, 10, 0, tzinfo=UTC).timestamp()


def simulate(rows: int, quota_now: int, quota_later: int, window: int, reset: float) -> float:
    """When the last row is created, walking window by window (the independent check)."""
    created, t, allowed = 0, NOW, quota_now
    while True:
        created += min(allowed, rows - created)
        if created >= rows:
            return t
        t = reset if t == NOW else t + window
        allowed = quota_later


def test_fits_in_what_is_left() -> None:
    """Rows that fit in what is left of the current window are done now."""
    assert finishes_at(40, 100, 86400, NOW, left=40, reset=NOW + 3600) == NOW


def test_finish_date_with_daily_windows() -> None:
    """250 rows at 100 a day, 30 left today: the last one is created two resets later."""
    reset = datetime(2026, 12, 5, tzinfo=UTC)
    end = finishes_at(250, 100, 86400, NOW, left=30, reset=reset.timestamp())
    # 30 today, 100 on the 5th, 100 on the 6th, the last 20 on the 7th at 00:00.
    assert datetime.fromtimestamp(end, UTC) == reset + timedelta(days=2)


def test_unknown_window_starts_now() -> None:
    """Without a known window, a fresh one is assumed to start now."""
    assert finishes_at(150, 100, 60, NOW) == NOW + 60


def test_deadline_quota() -> None:
    """To finish 1,000 rows by the 4th reset after today's, the quota per day it takes."""
    reset = NOW + 3600
    p = plan(1000, 100, 86400, NOW, left=100, reset=reset, by=reset + 3 * 86400)
    assert p.quota_per_window_needed == 200  # today and 4 more windows: 5 x 200
    assert p.quota_per_day_needed == 200
    assert finishes_at(1000, 200, 86400, NOW, left=200, reset=reset) <= reset + 3 * 86400


def test_short_windows_scale_to_a_day() -> None:
    """With 60-second windows, the per-day figure is the per-window one times 1,440."""
    p = plan(30, 5, 60, NOW, left=5, reset=NOW + 30, by=NOW + 30 + 60)
    assert p.quota_per_window_needed == 10
    assert p.quota_per_day_needed == 10 * 1440


def test_a_spent_window_may_leave_the_work_to_the_later_ones() -> None:
    """84 rows, 43 a window all spent now, two windows before the deadline: 42 a window
    does it (the later windows alone), not 43 (found by the property below)."""
    q = quota_needed(84, 43, 60, NOW, NOW + 61, left=0, reset=NOW + 1)
    assert q == 42
    assert simulate(84, 0, 42, 60, NOW + 1) <= NOW + 61


def test_deadline_in_the_past_is_refused() -> None:
    """A deadline before now is an error, not a quota."""
    with pytest.raises(ValueError, match="past"):
        quota_needed(10, 100, 86400, NOW, NOW - 1)


@given(
    rows=st.integers(0, 5000),
    per_window=st.integers(1, 300),
    window=st.integers(1, 200_000),
    left=st.integers(0, 300),
    until_reset=st.integers(1, 200_000),
)
def test_finish_matches_simulation(
    rows: int, per_window: int, window: int, left: int, until_reset: int
) -> None:
    """finishes_at agrees with walking the windows one by one."""
    left = min(left, per_window)
    reset = NOW + until_reset
    expected = simulate(rows, left, per_window, window, reset)
    assert finishes_at(rows, per_window, window, NOW, left, reset) == expected


@given(
    rows=st.integers(1, 3000),
    per_window=st.integers(1, 200),
    window=st.integers(60, 100_000),
    left=st.integers(0, 200),
    until_reset=st.integers(1, 100_000),
    extra=st.integers(0, 1_000_000),
)
def test_needed_quota_is_the_least_that_finishes_in_time(
    rows: int, per_window: int, window: int, left: int, until_reset: int, extra: int
) -> None:
    """quota_needed finishes by the deadline in simulation, and one less does not."""
    left = min(left, per_window)
    spent = per_window - left
    reset = NOW + until_reset
    by = NOW + extra
    q = quota_needed(rows, per_window, window, NOW, by, left, reset)

    def done_by(quota: int) -> bool:
        return simulate(rows, max(0, quota - spent), quota, window, reset) <= by

    assert done_by(q)
    if q > 1:
        assert not done_by(q - 1)
