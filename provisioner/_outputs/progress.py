"""The live progress display on a terminal (rich), for people watching a run.

Only used when stderr is a terminal (or ``--progress always``); cron, systemd and
Kubernetes get structured log lines instead, without control characters.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from provisioner._core.times import iso, utc_minute
from provisioner._outputs.observe import Eta, Snapshot, waiting

_STATUS_STYLE = {
    "created": "green",
    "duplicate": "cyan",
    "skipped": "blue",
    "failed": "red",
    "deferred": "yellow",
}


def _clock(seconds: float | None) -> str:
    """Seconds as H:MM:SS (or "-" when unknown)."""
    if seconds is None or seconds < 0:
        return "-"
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def until(epoch: float, now: float) -> str:
    """When a pause ends, for people: "14:05 UTC", with the date when not today."""
    same_day = time.gmtime(epoch)[:3] == time.gmtime(now)[:3]
    return time.strftime("%H:%M UTC", time.gmtime(epoch)) if same_day else utc_minute(epoch)


def render(snapshot: Snapshot, now: float) -> RenderableType:
    """The display for one snapshot (pure: used by tests and by the live display).

    The bar and percent are rows done of the manifest's rows (``fraction_done``), and
    ``eta_s`` comes from the rate of rows done (``Eta``); during a quota pause the ETA
    gives way to "waiting for quota until HH:MM UTC"."""
    s = snapshot
    head = Text.assemble(("provisioner ", "bold"), f"run {s.run_id}  ", (s.manifest, "dim"))
    fraction = 1.0 if s.finished else (s.fraction_done or 0.0)
    bar = Table.grid(padding=(0, 1))
    paused = waiting(s, now)
    eta = (
        Text(f"waiting for quota until {until(s.paused_until, now)}", style="bold yellow")
        if paused and s.paused_until is not None
        else Text(f"ETA {_clock(0 if s.finished else s.eta_s)}")
    )
    bar.add_row(
        ProgressBar(total=1.0, completed=fraction, width=36),
        Text(f"{fraction:4.0%}" if s.fraction_done is not None or s.finished else "  ? "),
        Text(f"{s.rows_done:,} rows" + (f" of {s.rows_total:,}" if s.rows_total else "")),
        Text(f"{s.rows_per_s or 0:,.0f} rows/s"),
        eta,
    )
    counts = Text("  ")
    for status, style in _STATUS_STYLE.items():
        counts.append(f"{status} ", style="dim")
        counts.append(f"{s.counts.get(status, 0):,}", style=style)
        counts.append("   ")
    lines: list[RenderableType] = [head, bar, counts]
    quotas = s.quotas or (
        {s.workspace: (s.quota_remaining, s.quota_limit, s.quota_reset_at or 0)}
        if s.quota_limit is not None and s.quota_remaining is not None
        else {}
    )
    for workspace, (remaining, limit, reset_at) in quotas.items():
        resets = utc_minute(reset_at)
        lines.append(
            Text(f"  quota {workspace}: {remaining:,} of {limit:,} left, resets {resets}",
                 style="dim")
        )  # fmt: skip
    if paused and s.paused_until is not None:
        lines.append(
            Text(
                f"  paused for the quota reset: {_clock(s.paused_until - now)} left",
                style="bold yellow",
            )
        )
    return Group(*lines)


def render_line(snapshot: Snapshot, now: float | None = None) -> dict[str, object]:
    """The display's figures for one whole line (``--progress always`` off a terminal)."""
    s = snapshot
    paused = now is not None and waiting(s, now)
    return {
        "event": "progress_display",
        "run_id": s.run_id,
        "rows_done": s.rows_done,
        "rows_total": s.rows_total,
        "fraction_done": None if s.fraction_done is None else round(s.fraction_done, 4),
        "fraction_read": None if s.fraction_read is None else round(s.fraction_read, 4),
        "rows_per_s": None if s.rows_per_s is None else round(s.rows_per_s, 1),
        "eta_s": None if s.eta_s is None else round(s.eta_s),
        "waiting_for_quota_until": iso(s.paused_until) if paused and s.paused_until else None,
        "finished": s.finished,
        **{status: s.counts.get(status, 0) for status in _STATUS_STYLE},
    }


class TerminalDisplay:
    """A ``RunObserver`` that redraws a few lines on stderr four times a second.

    Off a terminal (``--progress always`` into a file or pipe) there is nothing to redraw:
    it writes one whole line every ``line_interval`` seconds and one at the end, a JSON
    object when ``json_lines`` (so that no frame is ever glued to a log line)."""

    def __init__(
        self,
        console: Console | None = None,
        *,
        interval: float = 0.25,
        clock: Callable[[], float] = time.time,
        json_lines: bool = False,
        line_interval: float = 10.0,
    ) -> None:
        self.interval = interval
        self._clock = clock
        self._console = console or Console(stderr=True)
        self._live: Live | None = None
        self._json_lines = json_lines
        self._line_interval = line_interval
        self._last_line: float | None = None
        self._eta = Eta()

    def _write_line(self, snapshot: Snapshot, *, force: bool = False) -> None:
        now = self._clock()
        last = self._last_line
        if not force and last is not None and now - last < self._line_interval:
            return
        self._last_line = now
        fields = render_line(snapshot, now)
        if self._json_lines:
            line = orjson.dumps(fields).decode()
        else:
            line = "provisioner: " + " ".join(f"{k}={v}" for k, v in fields.items() if k != "event")
        stream = self._console.file
        stream.write(line + "\n")
        stream.flush()

    def update(self, snapshot: Snapshot) -> None:
        """Redraw with the latest snapshot (the first call starts the display)."""
        snapshot = self._eta.estimate(snapshot, self._clock())
        if not self._console.is_terminal:
            self._write_line(snapshot)
            return
        view = render(snapshot, self._clock())
        if self._live is None:
            # Log lines printed meanwhile go above the display (rich redirects stderr).
            self._live = Live(
                view,
                console=self._console,
                auto_refresh=False,
                redirect_stdout=False,
                redirect_stderr=True,
                transient=False,
            )
            self._live.start()
        self._live.update(view, refresh=True)

    def close(self, snapshot: Snapshot) -> None:
        """Draw the final state and leave it on the screen."""
        if not self._console.is_terminal:
            self._write_line(self._eta.estimate(snapshot, self._clock()), force=True)
            return
        self.update(snapshot)
        if self._live is not None:
            self._live.stop()
            self._live = None
