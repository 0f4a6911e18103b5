"""What a person reads: the end-of-run summary, written for someone at 9 am."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from provisioner._core.models import Outcome
from provisioner._core.safefile import create_temporary
from provisioner._core.times import iso, iso_or_none, utc_minute
from provisioner._core.vocab import DeferReason
from provisioner._outputs.files import FileSink, OutputFolder, cell, pass_through
from provisioner._state.interface import StoreReader
from provisioner._state.retention import Policy, Pruned
from provisioner._state.schema import RunRecord
from provisioner.errors import OutputError, StateError

_NEXT_STEP: dict[str, str] = {
    DeferReason.QUOTA: (
        "the quota window is spent; the next window opens {resume}: run the same command "
        "again then (rows already created are skipped)"
    ),
    DeferReason.RATE_LIMITED: (
        "Braze kept answering 429 past --max-wait; the next window opens {resume}: run the "
        "same command again then"
    ),
    DeferReason.OUTAGE: (
        "Braze was unavailable for longer than --max-wait: run the same command again later "
        "(nothing was lost)"
    ),
    DeferReason.KEY_REFUSED: (
        "Braze refused the API key: fix the key or its sends.id.create permission, or add "
        "this host's IP address to the key's IP allowlist (a key refused from a new host, "
        "such as an ephemeral runner, is often that), then run the same command again"
    ),
    DeferReason.INTERRUPTED: ("the run was interrupted: run the same command again to finish"),
    DeferReason.OUTPUT_FAILED: (
        "the output files could not be written, so the run stopped: run the same command "
        "again once the output folder can be written"
    ),
    DeferReason.REDIRECTED: (
        "the base URL answered a redirect (never followed: the key would go with it): set "
        "base_url to your instance's REST endpoint, then run the same command again"
    ),
    DeferReason.CERTIFICATE_FAILED: (
        "the server's TLS certificate could not be verified: set [braze] ca_file to the CA "
        "that signed it (or fix the server), then run the same command again"
    ),
    DeferReason.UNREACHABLE: (
        "the base URL never answered (DNS, refused connection or TLS/protocol error): fix "
        "base_url or the network, then run the same command again"
    ),
}


def printable(value: object) -> str:
    """``value`` as text with every control or invisible character escaped (``\\n``,
    ``\\x1b``, ``\\u2028``...): a path, a name or a server's message printed for a person
    cannot forge lines in cron mail or drive the terminal."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


_p = printable


def _friendly_time(value: object) -> str:
    """An ISO time from summary.json as "2026-11-27 00:00 UTC" (or a phrase if unknown)."""
    if not isinstance(value, str):
        return "at the next quota reset"
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return value
    return utc_minute(when.timestamp())


def human_summary(summary: Mapping[str, Any], out_dir: Path) -> str:
    """A few lines: the counts, where the files are, and what to do next."""
    counts: Mapping[str, int] = summary.get("counts", {})
    parts = [f"{n} {status}" for status, n in counts.items() if n]
    lines = [
        f"provisioner: run {_p(summary.get('run_id'))} finished with exit code "
        f"{_p(summary.get('exit_code'))} in {_p(summary.get('duration_s'))} s: "
        + _p(", ".join(parts) if parts else "no rows"),
        f"  outputs: {_p(out_dir)}/results.jsonl, failures.jsonl, deferred.csv, summary.json",
    ]
    if summary.get("manifest_read_to_end") is False:  # absent in summaries of older runs
        lines.append(
            f"  the manifest was not read to its end (a second signal, or its pipe went "
            f"silent after a stop): rows after the first {_p(summary.get('rows_read'))} are in no "
            "output file; run the same command again to process them (rows already created "
            "are skipped)"
        )
    failed = counts.get("failed", 0)
    if failed:
        errors: Mapping[str, int] = summary.get("errors", {})
        common = ", ".join(f"{code} ({n})" for code, n in list(errors.items())[:3])
        lines.append(f"  {failed} rows failed: see failures.jsonl; most common: {_p(common)}")
        if errors.get("in_doubt"):
            lines.append(
                "  in_doubt rows may have been created: check them in the Braze dashboard "
                "before using --retry-in-doubt"
            )
    deferred = counts.get("deferred", 0)
    if deferred:
        reasons: Mapping[str, int] = summary.get("deferred_reasons", {})
        quota: Mapping[str, Any] = summary.get("quota", {}) or {}
        resume = _friendly_time(quota.get("deferred_until") or quota.get("reset_at"))
        for reason, n in reasons.items():
            step = _NEXT_STEP.get(reason, "run the same command again later")
            lines.append(f"  {n} rows deferred by {_p(reason)}: " + step.format(resume=_p(resume)))
        for w in summary.get("workspaces", []) or []:
            if w.get("stop_message"):
                lines.append(f"  workspace {_p(w.get('name'))} stopped: {_p(w['stop_message'])}")
        needed = [w for w in summary.get("workspaces", []) or [] if w.get("windows_needed")]
        for w in needed:
            lines.append(
                f"  workspace {_p(w.get('name'))} ({_p(w.get('workspace'))}): "
                f"{_p(w.get('deferred_rows'))} deferred rows need {_p(w['windows_needed'])} more "
                "quota window(s)"
                + (
                    f"; at {_p(w['quota_per_window'])} per window the last is expected to be "
                    f"created {_friendly_time(w['finishes_at'])}"
                    if w.get("finishes_at")
                    else ""
                )
            )
    return "\n".join(lines)


def export_run(store: StoreReader, run_id: str, out_dir: Path) -> dict[str, object]:
    """Write a run's four output files again from the state store; return its summary.

    The files are produced by the same sink as during the run, so they are identical
    (same order by line, same fields), and written through temporaries and renames.
    """
    record, header, summary = store.run_info(run_id)
    if record.pruned_at is not None:
        raise StateError(pruned_message(record))
    folder = OutputFolder(out_dir)
    folder.prepare()
    sink = FileSink(folder, deferred_header=header)
    try:
        for outcome in store.iter_outcomes(run_id):
            sink.write(outcome)
    except BaseException:
        sink.abort()
        raise
    sink.commit(summary)
    return summary


#: results.csv's own columns, in order; the row's pass-through columns follow.
RESULTS_CSV = "results.csv"
_CSV_FIELDS = (
    "line", "status", "campaign_id", "send_id", "error", "message", "reason",
    "http_status", "attempts", "duplicate_of", "created_run", "created_at",
)  # fmt: skip
#: What a spreadsheet takes for the start of a formula (OWASP, "CSV Injection"): a cell
#: starting with one of them gets a leading ``'``, which shows it as text.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value: object) -> str:
    """One cell for a spreadsheet: None as empty, numbers as digits, and text that a
    spreadsheet would evaluate (``=HYPERLINK(...)``, ``+1``, ``-1``, ``@SUM(...)``, a
    leading tab or CR) prefixed with ``'``, so it is shown, never run."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else cell(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def _report_record(o: Outcome) -> dict[str, Any]:
    """One row of results.csv: the outcome's fields, then its pass-through columns."""
    record: dict[str, Any] = {
        "line": o.line,
        "status": o.status.value,
        "campaign_id": o.campaign_id,
        "send_id": o.send_id,
        "error": o.error,
        "message": o.message,
        "reason": o.reason,
        "http_status": o.http_status,
        "attempts": o.attempts,
        "duplicate_of": o.duplicate_of,
        "created_run": o.created_run,
        "created_at": iso_or_none(o.created_at),
    }
    pass_through(record, o.columns, frozenset(_CSV_FIELDS), keep_odd_ids=True)
    return record


def export_csv(store: StoreReader, run_id: str, out_dir: Path) -> dict[str, object]:
    """Write ``results.csv`` of a run from the state store; return its summary.

    A report for a spreadsheet, not a manifest: one row per manifest row (every status,
    in line order), the outcome's fields then the pass-through columns, every cell
    neutralised against formulas (``neutralise``), so it must never be fed back to a run
    (``deferred.csv`` is the manifest of what is left). UTF-8 with a BOM (Excel reads it
    as UTF-8 then), CRLF, every cell quoted; written through a temporary and a rename.
    """
    _record, _header, summary = store.run_info(run_id)
    folder = OutputFolder(out_dir)
    folder.prepare()
    try:
        # Two passes: the pass-through columns (the header) are known only once every row
        # has been seen (a JSONL manifest's keys vary by row).
        names: dict[str, None] = dict.fromkeys(_CSV_FIELDS)
        for outcome in store.iter_outcomes(run_id):
            names.update(dict.fromkeys(_report_record(outcome)))
        fd, temporary = create_temporary(folder.path, RESULTS_CSV)
        try:
            with open(fd, "w", encoding="utf-8-sig", newline="") as handle:
                writer = csv.writer(handle, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
                writer.writerow([neutralise(name) for name in names])
                for outcome in store.iter_outcomes(run_id):
                    record = _report_record(outcome)
                    writer.writerow([neutralise(record.get(name)) for name in names])
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, folder.file(RESULTS_CSV))
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise OutputError(
            f"cannot write {folder.file(RESULTS_CSV)}: {exc.strerror or exc}; free some space "
            "or choose another --out"
        ) from None
    finally:
        folder.release()
    return summary


def pruned_message(record: RunRecord) -> str:
    """One line for ``export`` of a pruned run: when, and what is left of it."""
    counts = ", ".join(f"{n} {s}" for s, n in record.counts.items() if n) or "no rows"
    ended = f"finished {iso(record.finished_at)}" if record.finished_at else "never finished"
    return (
        f"run {_p(record.run_id)} was pruned {iso(record.pruned_at or 0)} by the retention"
        " policy ([state] keep_days, keep_runs): its outcomes are gone, so its files cannot"
        f" be written again; what is left is its record (started {iso(record.started_at)},"
        f" {ended}, exit code {record.exit_code}, {_p(counts)}), which `provisioner status`"
        " lists"
    )


def format_pruned(pruned: Pruned, policy: Policy) -> str:
    """What ``provisioner prune`` removed (or would remove), in a few lines."""
    runs = ", ".join(_p(r) for r in pruned.runs[:5])
    if len(pruned.runs) > 5:
        runs += f" and {len(pruned.runs) - 5} more"
    what = f"{len(pruned.runs)} run(s){f' ({runs})' if runs else ''}, {pruned.rows:,} rows"
    if pruned.dry_run:
        head = f"provisioner: would prune {what}; store now {_mb(pruned.bytes_before)} (dry run)"
    else:
        head = (
            f"provisioner: pruned {what}; store {_mb(pruned.bytes_before)} ->"
            f" {_mb(pruned.bytes_after)}"
        )
    lines = [head, f"  retention: {policy.describe()}"]
    if pruned.note:
        lines.append(f"  note: {_p(pruned.note)}")
    return "\n".join(lines)


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def status_report(
    store: StoreReader, now: float, policy: Policy | None = None
) -> dict[str, object]:
    """Recent runs, quota used in the current window per workspace, rows needing care,
    and the store's size with the retention in force."""
    runs = [
        {
            "run_id": r.run_id,
            "manifest": r.manifest,
            "started_at": iso(r.started_at),
            "finished_at": iso(r.finished_at) if r.finished_at else None,
            "exit_code": r.exit_code,
            "counts": {k: v for k, v in r.counts.items() if v},
            "pid": r.pid,
            "pruned_at": iso(r.pruned_at) if r.pruned_at else None,
        }
        for r in store.recent_runs(10)
    ]
    quota = []
    for ws in store.workspaces():
        window = store.quota_window(ws, now)
        if window is not None:
            quota.append(
                {
                    "workspace": ws,
                    "limit": window.limit,
                    "remaining": window.remaining,
                    "spent_by_provisioner": window.spent,
                    "resets_at": iso(window.reset_at),
                }
            )
    policy = policy or Policy()
    return {
        "state": str(store.path),
        "store_bytes": store.size_bytes(),
        "retention": {**policy.to_dict(), "text": policy.describe()},
        "runs": runs,
        "quota": quota,
        "problems": store.open_problems(),
    }


def format_status(report: Mapping[str, Any]) -> str:
    """The status report as a few aligned lines for a terminal."""
    lines = [f"state store: {_p(report['state'])} ({_mb(report['store_bytes'])})"]
    lines += [f"retention: {_p(report['retention']['text'])}", "", "recent runs:"]
    runs: list[Mapping[str, Any]] = report["runs"]
    if not runs:
        lines.append("  (none)")
    for r in runs:
        code = "running" if r["exit_code"] is None else f"exit {r['exit_code']}"
        counts = ", ".join(f"{n} {s}" for s, n in r["counts"].items()) or "no rows"
        if r.get("pruned_at"):
            counts += f" (pruned {r['pruned_at']})"
        lines.append(
            f"  {_p(r['run_id'])}  {_p(r['started_at'])}  {code:>8}  {_p(counts)}  "
            f"{_p(r['manifest'])}"
        )
    lines += ["", "quota in the current window:"]
    quota: list[Mapping[str, Any]] = report["quota"]
    if not quota:
        lines.append("  (no window seen yet)")
    for q in quota:
        lines.append(
            f"  {_p(q['workspace'])}: {_p(q['remaining'])} of {_p(q['limit'])} left, "
            f"{_p(q['spent_by_provisioner'])} spent by provisioner, resets {_p(q['resets_at'])}"
        )
    p: Mapping[str, int] = report["problems"]
    lines += [
        "",
        f"rows in doubt: {p.get('in_doubt', 0)} (check the Braze dashboard, then --retry-in-doubt)",
        f"rows in flight when a run died: {p.get('in_flight_stale', 0)}",
        f"rows deferred by the last run: {p.get('deferred_last_run', 0)}",
    ]
    return "\n".join(lines)
