"""What a person reads: the end-of-run summary, written for someone at 9 am."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from provisioner._core.times import iso, utc_minute
from provisioner._core.vocab import DeferReason
from provisioner._outputs.files import FileSink, OutputFolder
from provisioner._state.interface import StoreReader
from provisioner._state.retention import Policy, Pruned
from provisioner._state.schema import RunRecord
from provisioner.errors import StateError

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
