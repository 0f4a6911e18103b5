"""`provisioner validate`: what a run of this manifest would do, without sending anything.

It reads the whole manifest with the run's own reader, validation, duplicate check and
state lookups, and tells how many rows are invalid, repeated, already provisioned and
still to send, and per workspace how many quota windows (days, by default) the rest
needs given the caps and what the state store knows of the current window.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from provisioner._config.settings import Settings
from provisioner._core.models import Row, RowError
from provisioner._manifest.reader import Manifest
from provisioner._manifest.rules import validate
from provisioner._manifest.seen import SeenIndex
from provisioner._state.schema import StoreReader
from provisioner._state.store import SqliteStateStore, default_state_path, open_store

_BATCH = 512
_EXAMPLES = 5


@dataclass(slots=True)
class WorkspaceForecast:
    """One workspace's share of the manifest."""

    name: str
    label: str
    to_send: int = 0
    provisioned: int = 0
    in_doubt: int = 0
    per_window: int = 0
    left_this_window: int | None = None
    next_reset_at: float | None = None

    def windows_needed(self) -> int:
        """Quota windows the rows to send need, counting what is left in the current one."""
        rest = self.to_send
        if rest == 0:
            return 0
        windows = 0
        if self.left_this_window:
            windows, rest = 1, max(0, rest - self.left_this_window)
        return windows + math.ceil(rest / max(1, self.per_window))


@dataclass(slots=True)
class Forecast:
    """The whole report."""

    manifest: str
    rows: int = 0
    invalid: int = 0
    duplicates: int = 0
    examples: list[str] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    workspaces: dict[str, WorkspaceForecast] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """0 when the manifest is clean, 1 when it has invalid rows."""
        return 1 if self.invalid else 0

    def to_dict(self) -> dict[str, object]:
        """The report as plain data (for --json)."""
        return {
            "manifest": self.manifest,
            "rows": self.rows,
            "invalid": self.invalid,
            "invalid_examples": self.examples,
            "errors": dict(self.errors.most_common()),
            "duplicates": self.duplicates,
            "already_provisioned": sum(w.provisioned for w in self.workspaces.values()),
            "in_doubt": sum(w.in_doubt for w in self.workspaces.values()),
            "to_send": sum(w.to_send for w in self.workspaces.values()),
            "workspaces": [
                {
                    "name": w.name,
                    "workspace": w.label,
                    "to_send": w.to_send,
                    "already_provisioned": w.provisioned,
                    "per_window": w.per_window,
                    "left_this_window": w.left_this_window,
                    "windows_needed": w.windows_needed(),
                }
                for w in self.workspaces.values()
            ],
        }

    def text(self) -> str:
        """The report for a person."""
        d = self.to_dict()
        lines = [
            f"manifest {self.manifest}: {self.rows:,} rows",
            f"  invalid: {self.invalid:,}" + (f" ({', '.join(self.examples)})" if self.examples
                                              else ""),
            f"  duplicates: {self.duplicates:,}",
            f"  already provisioned: {d['already_provisioned']:,}",
            f"  in doubt from earlier runs: {d['in_doubt']:,}",
            f"  to send: {d['to_send']:,}",
        ]  # fmt: skip
        for w in self.workspaces.values():
            lines.append(
                f"  workspace {w.name} ({w.label}): {w.to_send:,} to send at {w.per_window:,} "
                f"per window: {w.windows_needed()} window(s)"
                + (f", {w.left_this_window} left in the current one" if w.left_this_window
                   is not None else "")
            )  # fmt: skip
        return "\n".join(lines)


def forecast(settings: Settings) -> Forecast:
    """Read the manifest and the state store; send nothing."""
    path = Path(settings.state_path).expanduser() if settings.state_path else default_state_path()
    store: SqliteStateStore | None = open_store(path, lock=False) if path.exists() else None
    lanes = {w.name: w for w in settings.workspaces}
    now = time.time()
    report = Forecast(manifest=settings.manifest)
    for w in settings.workspaces:
        cap = w.quota if w.quota is not None else settings.quota
        wf = WorkspaceForecast(w.name, w.api_key.label, per_window=cap or settings.default_quota)
        window = store.quota_window(wf.label, now) if store is not None else None
        if window is not None:
            wf.per_window = min(cap or window.limit, window.limit)
            left = window.remaining if cap is None else min(window.remaining, cap - window.spent)
            wf.left_this_window, wf.next_reset_at = max(0, left), window.reset_at
        report.workspaces[w.name] = wf
    seen = SeenIndex(settings.derive_send_ids)
    try:
        with Manifest(
            settings.manifest,
            settings.manifest_format,
            max_row_bytes=settings.max_row_bytes,
            columns=dict(settings.columns),
            encoding=settings.manifest_encoding,
            delimiter=settings.csv_delimiter,
        ) as manifest:
            batch: list[Row] = []
            for item in manifest:
                report.rows += 1
                checked = item if isinstance(item, RowError) else validate(item)
                if isinstance(checked, Row) and checked.workspace not in (None, *lanes):
                    checked = RowError(checked.line, "unknown_workspace",
                                       f"workspace {checked.workspace!r} is not declared",
                                       "workspace")  # fmt: skip
                if isinstance(checked, RowError):
                    report.invalid += 1
                    report.errors[checked.error] += 1
                    if len(report.examples) < _EXAMPLES:
                        report.examples.append(f"line {checked.line}: {checked.error}")
                    continue
                batch.append(checked)
                if len(batch) >= _BATCH:
                    _count(report, batch, seen, store, settings)
                    batch = []
            if batch:
                _count(report, batch, seen, store, settings)
    finally:
        seen.close()
        if store is not None:
            store.close()
    return report


def _count(
    report: Forecast, rows: list[Row], seen: SeenIndex, store: StoreReader | None,
    settings: Settings,
) -> None:  # fmt: skip
    names = [r.workspace or settings.default_workspace for r in rows]
    scoped = len(settings.workspaces) > 1
    by_lane: dict[str, list[tuple[str, str]]] = {}
    for name, a in zip(names, seen.assign(rows, names if scoped else None), strict=True):
        if a.duplicate_of is not None:
            report.duplicates += 1
        else:
            by_lane.setdefault(name, []).append(a.key)
    for name, keys in by_lane.items():
        wf = report.workspaces[name]
        priors = store.lookup_many(wf.label, keys) if store is not None else {}
        for key in keys:
            prior = priors.get(key)
            if prior is None:
                wf.to_send += 1
            elif prior.kind == "created":
                wf.provisioned += 1
            else:
                wf.in_doubt += 1
