"""`provisioner validate`: what a run of this manifest would do, without sending anything.

It reads the whole manifest with the run's own reader, validation, duplicate check and
state lookups, and tells how many rows are invalid, repeated, already provisioned and
still to send, and per workspace how many quota windows (days, by default) the rest
needs given the caps and what the state store knows of the current window.

With a key (and unless ``--no-campaign-check``), each workspace's campaigns are listed as a
run lists them (``campaign_check.py``): rows for unknown or non-API campaigns are counted
as invalid (``unknown_campaign``, ``not_api_campaign``) and not as rows to send.

Without a key (a CI job linting a manifest), the manifest is still validated (header,
rows, duplicates), but a workspace with no key is compared with neither the store (its
rows and windows are filed under the key's hash) nor Braze: one line says so (and
``not_compared`` in ``--json``), and the exit code is as for a clean manifest.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

from provisioner._braze.campaigns import Campaigns, Unchecked, list_campaigns
from provisioner._braze.client import BrazeClient
from provisioner._braze.retry import RetryBudget, RetryPolicy
from provisioner._config.access import MissingApiKey
from provisioner._config.settings import Settings
from provisioner._core.models import BUFFER_BYTES, COLUMN_BYTES, Row, RowError
from provisioner._core.times import iso
from provisioner._core.vocab import ExitCode
from provisioner._manifest.reader import manifest_for
from provisioner._manifest.rules import validate
from provisioner._manifest.seen import Assigned, SeenIndex
from provisioner._pipeline.campaign_check import refused
from provisioner._pipeline.decide import SEND, SKIP, decide
from provisioner._pipeline.plan import Plan, plan
from provisioner._state.interface import StoreReader
from provisioner._state.opening import open_store
from provisioner._state.store import state_location
from provisioner.errors import UsageError

_BATCH = 512
_NOT_COMPARED = (
    "no API key ({where}), so not compared with the state store or Braze: campaign check "
    "skipped, quota not checked, rows already provisioned counted as to send"
)
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
    window: int = 86400

    def plan(self, now: float, by: float | None) -> Plan:
        """When the rows to send are expected done, and with ``by`` the quota it needs."""
        return plan(
            self.to_send, max(1, self.per_window), self.window, now,
            self.left_this_window, self.next_reset_at, by,
        )  # fmt: skip

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
    #: Per workspace name: its campaigns, or why they were not checked.
    campaigns: dict[str, Campaigns | Unchecked] = field(default_factory=dict)
    now: float = field(default_factory=time.time)
    #: The deadline of --by (epoch seconds), if any.
    by: float | None = None
    #: Per workspace name without a key: why it was not compared with the store and Braze.
    not_compared: dict[str, str] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """0 when the manifest is clean, 1 when it has invalid rows."""
        return ExitCode.ROWS_FAILED if self.invalid else ExitCode.OK

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
            "campaign_check": {
                name: "checked" if isinstance(c, Campaigns) else c.message
                for name, c in self.campaigns.items()
            },
            "not_compared": [
                {"name": name, "message": message} for name, message in self.not_compared.items()
            ],
            "workspaces": [
                {
                    "name": w.name,
                    "workspace": w.label,
                    "to_send": w.to_send,
                    "already_provisioned": w.provisioned,
                    "compared": w.name not in self.not_compared,
                    "per_window": w.per_window,
                    "left_this_window": w.left_this_window,
                    "windows_needed": w.windows_needed(),
                    **_plan_fields(w.plan(self.now, self.by), self.by),
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
        for w in self.workspaces.values():
            lines.append("    " + plan_text(w.plan(self.now, self.by), self.by))
        for name, c in self.campaigns.items():
            if isinstance(c, Unchecked) and name not in self.not_compared:
                lines.append(f"  workspace {name}: campaigns not checked: {c.message}")
        for name, message in self.not_compared.items():
            lines.append(f"  workspace {name}: {message}")
        return "\n".join(lines)


def list_all(settings: Settings) -> dict[str, Campaigns | Unchecked]:
    """Each workspace's campaign listing, as a run gets it (same retry policy)."""
    policy = RetryPolicy(
        attempts=settings.retry_attempts,
        max_time=settings.retry_max_time,
        backoff_base=settings.retry_backoff_base,
        backoff_cap=settings.retry_backoff_cap,
    )

    async def fetch() -> dict[str, Campaigns | Unchecked]:
        out: dict[str, Campaigns | Unchecked] = {}
        budget = RetryBudget()
        for w in settings.workspaces:
            if not w.api_key.present:
                out[w.name] = Unchecked("no_api_key", "skipped: no API key")
                continue
            async with BrazeClient(
                w.base_url, w.api_key, concurrency=1, connect_timeout=settings.connect_timeout,
                read_timeout=settings.read_timeout, ca_file=settings.ca_file,
            ) as client:  # fmt: skip
                out[w.name] = await list_campaigns(client, policy=policy, budget=budget)
        return out

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(fetch())
    # Called from code that is inside an event loop (a notebook, an async test, an
    # orchestrator's async task): asyncio.run refuses there, so the listing gets its own
    # loop on a thread of its own.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, fetch()).result()


def _plan_fields(p: Plan, by: float | None) -> dict[str, object]:
    out: dict[str, object] = {"quota_per_window": p.per_window, "finishes_at": iso(p.finishes_at)}
    if by is not None:
        out["by"] = iso(by)
        out["quota_per_day_needed"] = p.quota_per_day_needed
    return out


def plan_text(p: Plan, by: float | None) -> str:
    """One workspace's plan for a person."""
    when = datetime.fromtimestamp(p.finishes_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = (
        f"plan: {p.rows:,} row(s) at {p.per_window:,} per {p.window:,} s window: the last "
        f"expected to be created {when}"
    )
    if by is not None:
        deadline = datetime.fromtimestamp(by, UTC).strftime("%Y-%m-%d %H:%M UTC")
        text += (
            f"; to finish by {deadline} it takes {p.quota_per_day_needed:,} per day "
            f"({p.quota_per_window_needed:,} per window): ask Braze for that quota"
            if (p.quota_per_window_needed or 0) > p.per_window
            else f"; on time for {deadline} at the current quota"
        )
    return text


def forecast(settings: Settings, *, by: float | None = None) -> Forecast:
    """Read the manifest and the state store; send nothing. ``by``: a deadline (epoch s)."""
    path = state_location(settings.state_path)
    exists = isinstance(path, str) or path.exists()  # a database is opened (and checked)
    # The store files rows and windows under each key's hash: without any key it has
    # nothing to say, and is not opened (a CI job linting a manifest has no store).
    keyed = any(w.api_key.present for w in settings.workspaces)
    store: StoreReader | None = open_store(path, lock=False) if exists and keyed else None
    lanes = {w.name: w for w in settings.workspaces}
    now = time.time()
    if by is not None and by < now:
        raise UsageError(
            f"--by {iso(by)} is in the past: give a later date (YYYY-MM-DD or an ISO 8601 time)"
        )
    report = Forecast(manifest=settings.manifest, now=now, by=by)
    for w in settings.workspaces:
        if isinstance(w.api_key, MissingApiKey):
            var = w.api_key.variable
            where = f"{var} is not set" if var else "its api_key_file is not set"
            report.not_compared[w.name] = _NOT_COMPARED.format(where=where)
    if settings.campaign_check:
        report.campaigns = list_all(settings)
    for w in settings.workspaces:
        cap = w.quota if w.quota is not None else settings.quota
        wf = WorkspaceForecast(w.name, w.api_key.label, per_window=cap or settings.default_quota,
                               window=settings.default_window)  # fmt: skip
        keyed_store = store if w.api_key.present else None
        window = keyed_store.quota_window(wf.label, now) if keyed_store is not None else None
        if window is not None:
            wf.per_window = min(cap or window.limit, window.limit)
            left = window.remaining if cap is None else min(window.remaining, cap - window.spent)
            wf.left_this_window, wf.next_reset_at = max(0, left), window.reset_at
        report.workspaces[w.name] = wf
    seen = SeenIndex(settings.derive_send_ids)
    try:
        with manifest_for(settings) as manifest:
            batch: list[Row] = []
            # Bounded by bytes too (models.BUFFER_BYTES), as the run's buffers are: 512
            # rows of 150,000 columns would be 5 GB.
            lines, read, held = manifest.lines(), 0, 0
            for item in manifest:
                report.rows += 1
                size = lines.bytes_read - read + COLUMN_BYTES * len(item.columns)
                read = lines.bytes_read
                checked = item if isinstance(item, RowError) else validate(item)
                if isinstance(checked, Row) and checked.workspace not in (None, *lanes):
                    checked = RowError(checked.line, "unknown_workspace",
                                       f"workspace {checked.workspace!r} is not declared",
                                       "workspace")  # fmt: skip
                if isinstance(checked, Row):
                    checked = _campaign_error(report, checked, settings)
                if isinstance(checked, RowError):
                    report.invalid += 1
                    report.errors[checked.error] += 1
                    if len(report.examples) < _EXAMPLES:
                        report.examples.append(f"line {checked.line}: {checked.error}")
                    continue
                batch.append(checked)
                held += size
                if len(batch) >= _BATCH or held >= BUFFER_BYTES:
                    _count(report, batch, seen, store, settings)
                    batch, held = [], 0
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
    by_lane: dict[str, list[Assigned]] = {}
    for name, a in zip(names, seen.assign(rows, names if scoped else None), strict=True):
        if a.duplicate_of is not None:
            report.duplicates += 1
        else:
            by_lane.setdefault(name, []).append(a)
    force, retry = settings.force, settings.retry_in_doubt
    for name, batch in by_lane.items():
        wf = report.workspaces[name]
        compared = name not in report.not_compared  # without a key: no rows in the store
        priors = (
            store.lookup_many(wf.label, [a.key for a in batch])
            if store is not None and compared
            else {}
        )
        for a in batch:
            # The run's own decision (decide.py), so that the forecast is what run does.
            decision = decide(
                a.send_id is not None, priors.get(a.key), force=force, retry_in_doubt=retry
            )
            if decision is SEND:
                wf.to_send += 1
            elif decision is SKIP:
                wf.provisioned += 1
            else:
                wf.in_doubt += 1


def _campaign_error(report: Forecast, row: Row, settings: Settings) -> Row | RowError:
    """The row, or the campaign check's refusal of it as a run would give it."""
    known = report.campaigns.get(row.workspace or settings.default_workspace)
    if not isinstance(known, Campaigns):
        return row
    code = known.verdict(row.campaign_id)
    if code is None:
        return row
    return RowError(row.line, code, refused(row, None, code).message or code, "campaign_id")


def parse_deadline(text: str) -> float:
    """``--by``: a date (00:00 UTC that day) or an ISO 8601 time (UTC if no offset)."""
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"--by {text!r} is not a date: give YYYY-MM-DD (00:00 UTC that day) or an ISO "
            "8601 time such as 2026-12-24T18:00:00Z"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()
