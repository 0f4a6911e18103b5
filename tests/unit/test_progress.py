"""Progress and ETA: by rows done (not rows read), with quota pauses shown as such.

Synthetic snapshots and a fake clock: no run, no sockets, no timing."""

from __future__ import annotations

import dataclasses
import io
import time

import orjson
from rich.console import Console

from provisioner._outputs.observe import Eta, Snapshot, fraction_done
from provisioner._outputs.progress import TerminalDisplay, render
from provisioner.testing import FakeClock

# 2026-12-04 14:00:00 UTC: the pause below ends at 14:05 the same day.
NOW = 1_796_392_800.0


def snap(elapsed: float, done: int, **kw: object) -> Snapshot:
    """A run of 1,000 rows, all read (the reader is far ahead), ``done`` of them done."""
    base = Snapshot(
        run_id="r1", manifest="m.csv", workspace="ws-abc", started_at=NOW - elapsed,
        elapsed_s=elapsed, rows_done=done, counts={"created": done}, requests=done,
        retries=0, http_429=0, http_by_class={"2xx": done}, rows_per_s=None,
        fraction_read=1.0, eta_s=None, quota_limit=None, quota_remaining=None,
        quota_reset_at=None, paused_until=None, rows_total=1000,
        fraction_done=fraction_done(done, 1000, 1000, 1.0),
    )  # fmt: skip
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def text_of(snapshot: Snapshot, now: float) -> str:
    console = Console(width=140, record=True, force_terminal=False)
    console.print(render(snapshot, now))
    return console.export_text()


def test_percent_is_rows_done_of_the_total() -> None:
    """All 1,000 rows read, 250 done: 25%, not the 100% of rows read."""
    assert fraction_done(250, 1000, 1000, 1.0) == 0.25
    text = text_of(snap(10, 250), NOW)
    assert " 25%" in text
    assert "250 rows of 1,000" in text


def test_percent_before_the_total_is_known_scales_the_bytes_read() -> None:
    """Half the file read (500 rows), 100 of them done: 10%; standard input: unknown."""
    assert fraction_done(100, 500, None, 0.5) == 0.1
    assert fraction_done(100, 500, None, None) is None
    assert fraction_done(0, 0, 0, None) == 1.0  # an empty manifest is done


def test_eta_is_rows_left_over_the_rate_of_rows_done() -> None:
    """100 rows done per 10 s, 800 left: 80 s, whatever the reader has read."""
    eta = Eta()
    eta.estimate(snap(10, 100), NOW)
    s = eta.estimate(snap(20, 200), NOW)
    assert s.eta_s == 80.0


def test_the_first_snapshot_measures_from_the_start() -> None:
    """The run's start is the first sample: 50 rows in 5 s, 950 left: 95 s."""
    assert Eta().estimate(snap(5, 50), NOW).eta_s == 95.0


def test_eta_follows_the_recent_rate() -> None:
    """100 rows/s for a minute, then 10 rows/s: once a window has passed at the new rate,
    the ETA is the new rate's (rows left / 10), not the run's average."""
    eta = Eta(window=60)
    big = {"rows_total": 100_000}
    for t in range(10, 61, 10):
        eta.estimate(snap(t, 100 * t, **big, fraction_done=t / 1000), NOW)
    s = snap(0, 0)
    for t in range(70, 201, 10):
        done = 6000 + 10 * (t - 60)
        s = eta.estimate(snap(t, done, **big, fraction_done=done / 100_000), NOW)
    assert s.rows_done == 7400
    assert s.eta_s == (100_000 - 7400) / 10


def test_a_quota_pause_shows_as_waiting_not_as_a_growing_eta() -> None:
    """10 rows/s, then an hour's pause: during it no ETA but "waiting for quota until
    14:05 UTC"; after it the ETA is the new rate's, not stretched by the hour paused."""
    eta = Eta()
    eta.estimate(snap(10, 100), NOW - 3600)
    paused = snap(20, 200, paused_until=NOW + 300)
    during = eta.estimate(paused, NOW)
    assert during.eta_s is None
    text = text_of(during, NOW)
    assert "waiting for quota until 14:05 UTC" in text
    assert "ETA" not in text
    assert "paused for the quota reset: 0:05:00 left" in text
    # The pause is over: two snapshots at 10 rows/s after it.
    later = NOW + 400
    eta.estimate(snap(3700, 300), later)
    after = eta.estimate(snap(3710, 400), later)
    assert after.eta_s == 60.0  # 600 left at 10 rows/s
    # The old formula, elapsed * (1 - f) / f, would have said 5,565 s.
    assert "ETA 0:01:00" in text_of(after, later)


def test_a_pause_ending_another_day_names_the_date() -> None:
    """A pause past midnight UTC: the date is in the line."""
    s = snap(20, 200, paused_until=NOW + 12 * 3600)
    assert "waiting for quota until 2026-12-05 02:00 UTC" in text_of(s, NOW)


def test_finished_is_done() -> None:
    """A finished run: 100% and ETA 0 whatever the counts say."""
    s = Eta().estimate(snap(30, 1000, finished=True, exit_code=0), NOW)
    assert s.eta_s == 0.0
    assert "100%" in text_of(s, NOW)


def test_display_lines_off_a_terminal_carry_the_eta_and_the_pause() -> None:
    """``--progress always`` into a pipe: each JSON line has rows done of the total, the
    ETA from the rate of rows done, and during a pause when the wait ends instead."""
    clock = FakeClock(NOW)
    out = io.StringIO()
    display = TerminalDisplay(
        Console(file=out, force_terminal=False), clock=clock, json_lines=True, line_interval=0
    )
    display.update(snap(10, 100))
    clock.advance(10)
    display.update(snap(20, 200))
    clock.advance(10)
    display.update(snap(30, 250, paused_until=NOW + 600))
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert [line["fraction_done"] for line in lines] == [0.1, 0.2, 0.25]
    assert [line["rows_total"] for line in lines] == [1000, 1000, 1000]
    assert [line["eta_s"] for line in lines] == [90, 80, None]
    assert [line["waiting_for_quota_until"] for line in lines] == [
        None,
        None,
        time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(NOW + 600)),
    ]
