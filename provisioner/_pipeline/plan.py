"""The quota plan: when the last row is expected to be created, and the quota a deadline needs.

Pure arithmetic over fixed windows (Braze's quota windows are fixed, not rolling): no
clock, no I/O, so the tests can check it against a window-by-window simulation.

Model: the current window has ``left`` creations still allowed and ends at ``reset``;
every window after it allows ``per_window`` and lasts ``window`` seconds. Rows are sent as
soon as a window allows them (the ``asap`` pace), so the last row is created at ``now``
when what is left suffices, else at the start of the window that takes it. A workspace
whose current window is not known (no earlier run) is taken to start a fresh window now.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["DAY", "Plan", "finishes_at", "plan", "quota_needed"]

DAY = 86400


@dataclass(frozen=True, slots=True)
class Plan:
    """One workspace's plan; times are epoch seconds (UTC)."""

    rows: int
    per_window: int
    window: int
    finishes_at: float
    #: With a deadline: the quota per window, and per day, that finishes by then.
    quota_per_window_needed: int | None = None
    quota_per_day_needed: int | None = None


def _window_state(
    now: float, per_window: int, window: int, left: int | None, reset: float | None
) -> tuple[int, float]:
    if left is None or reset is None or reset <= now:
        return per_window, now + window
    return max(0, left), reset


def finishes_at(
    rows: int,
    per_window: int,
    window: int,
    now: float,
    left: int | None = None,
    reset: float | None = None,
) -> float:
    """When the last of ``rows`` is expected to be created (``now`` if it fits now)."""
    if per_window < 1 or window < 1:
        raise ValueError(f"per_window and window must be >= 1, got {per_window}, {window}")
    left, reset = _window_state(now, per_window, window, left, reset)
    if rows <= left:
        return now
    later = math.ceil((rows - left) / per_window)  # windows after the current one
    return reset + (later - 1) * window


def quota_needed(
    rows: int,
    per_window: int,
    window: int,
    now: float,
    by: float,
    left: int | None = None,
    reset: float | None = None,
) -> int:
    """The least quota per window with which the last row is created at or before ``by``.

    A raised quota is assumed to apply from the current window on, which keeps what it has
    already spent (``per_window - left``). Raises ValueError when ``by`` is before ``now``.
    """
    if by < now:
        raise ValueError("the deadline is in the past")
    if rows <= 0:
        return 0
    left, reset = _window_state(now, per_window, window, left, reset)
    spent = max(0, per_window - left)
    starts = 1 + (math.floor((by - reset) / window) + 1 if by >= reset else 0)
    # With quota q: max(0, q - spent) now, q in each of the starts - 1 later windows.
    if starts > 1:
        # A quota no higher than what is spent adds nothing now: the later windows do it
        # all, and that may be the least quota even where q = spent would add nothing.
        later_only = math.ceil(rows / (starts - 1))
        if later_only <= spent:
            return later_only
    return math.ceil((rows + spent) / starts)


def plan(
    rows: int,
    per_window: int,
    window: int,
    now: float,
    left: int | None = None,
    reset: float | None = None,
    by: float | None = None,
) -> Plan:
    """The plan for one workspace (``by``: an optional deadline, epoch seconds)."""
    end = finishes_at(rows, per_window, window, now, left, reset)
    if by is None:
        return Plan(rows, per_window, window, end)
    needed = quota_needed(rows, per_window, window, now, by, left, reset)
    per_day = math.ceil(needed * DAY / window)
    return Plan(rows, per_window, window, end, needed, per_day)
