"""The sandbox's ledger: what it created and how it answered ``/sends/id/create``.

The ledger is the sandbox's side of the truth that tests and rehearsals compare a run's
output files against (``GET /sandbox/ledger`` serialises it). It lives apart from the
server, the faults and the modes, which all write to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Ledger", "LedgerEntry", "WindowFigures"]


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One creation as the server saw it; ``at`` is the sandbox clock (epoch seconds)."""

    workspace: str
    campaign_id: str
    send_id: str
    at: float


@dataclass(slots=True)
class WindowFigures:
    """One workspace's quota window: ``ours`` creations by the clients of the sandbox,
    ``other`` by the shared consumer, ``http_429`` answers to our clients,
    ``outage`` creates answered by an outage (503 or reset), ``invalid_campaign`` 400s
    for a campaign ``--campaigns`` does not list as an API campaign and
    ``invalid_counted`` those of them that spent quota (``--invalid-counts``)."""

    workspace: str
    window_start: int
    window_end: int
    quota: int
    ours: int = 0
    other: int = 0
    http_429: int = 0
    outage: int = 0
    invalid_campaign: int = 0
    invalid_counted: int = 0


@dataclass(slots=True)
class Ledger:
    """What the sandbox created and how it answered ``/sends/id/create``.

    ``by_status`` counts answers by status code as a string, plus ``"dropped"`` for
    connections a fault closed and ``"refused"`` for those an outage reset; ``total`` is
    the sum of all of them. ``windows`` holds per-window figures by (workspace, start).
    """

    created: list[LedgerEntry] = field(default_factory=list)
    by_status: dict[str, int] = field(default_factory=dict)
    total: int = 0
    windows: dict[tuple[str, int], WindowFigures] = field(default_factory=dict)
    #: Answers of ``GET /campaigns/list`` by status code (apart: another endpoint).
    campaigns_list: dict[str, int] = field(default_factory=dict)

    def count(self, status: int | str) -> int:
        """How many requests got this status (or ``"dropped"``, ``"refused"``)."""
        return self.by_status.get(str(status), 0)

    def window_figures(self, workspace: str | None = None) -> list[WindowFigures]:
        """Per-window figures, oldest window first, of one workspace or of all."""
        return sorted(
            (w for w in self.windows.values() if workspace is None or w.workspace == workspace),
            key=lambda w: (w.window_start, w.workspace),
        )

    def to_dict(self) -> dict[str, object]:
        """The document served at ``GET /sandbox/ledger``."""
        # Entries stay dataclasses: orjson writes them as objects keyed by field name.
        return {
            "created": self.created,
            "requests": {"total": self.total, "by_status": dict(self.by_status)},
            "windows": self.window_figures(),
            "campaigns_list": dict(self.campaigns_list),
        }

    def _answered(self, key: str) -> None:
        self.total += 1
        self.by_status[key] = self.by_status.get(key, 0) + 1

    def _window(self, workspace: str, start: int, end: int, quota: int) -> WindowFigures:
        figures = self.windows.get((workspace, start))
        if figures is None:
            figures = self.windows[workspace, start] = WindowFigures(workspace, start, end, quota)
        return figures
