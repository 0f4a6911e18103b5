"""What a person reads: the end-of-run summary, written for someone at 9 am."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

_NEXT_STEP = {
    "quota": "the quota window is spent; the next window opens {resume}: run the same command "
    "again then (rows already created are skipped)",
    "rate_limited": "Braze kept answering 429 past --max-wait; the next window opens {resume}: "
    "run the same command again then",
    "key_refused": "Braze refused the API key: fix the key or its sends.id.create permission, "
    "then run the same command again",
    "interrupted": "the run was interrupted: run the same command again to finish",
}


def human_summary(summary: Mapping[str, Any], out_dir: Path) -> str:
    """A few lines: the counts, where the files are, and what to do next."""
    counts: Mapping[str, int] = summary.get("counts", {})
    parts = [f"{n} {status}" for status, n in counts.items() if n]
    lines = [
        f"provisioner: run {summary.get('run_id')} finished with exit code "
        f"{summary.get('exit_code')} in {summary.get('duration_s')} s: "
        + (", ".join(parts) if parts else "no rows"),
        f"  outputs: {out_dir}/results.jsonl, failures.jsonl, deferred.csv, summary.json",
    ]
    failed = counts.get("failed", 0)
    if failed:
        errors: Mapping[str, int] = summary.get("errors", {})
        common = ", ".join(f"{code} ({n})" for code, n in list(errors.items())[:3])
        lines.append(f"  {failed} rows failed: see failures.jsonl; most common: {common}")
        if errors.get("in_doubt"):
            lines.append(
                "  in_doubt rows may have been created: check them in the Braze dashboard "
                "before using --retry-in-doubt"
            )
    deferred = counts.get("deferred", 0)
    if deferred:
        reasons: Mapping[str, int] = summary.get("deferred_reasons", {})
        quota: Mapping[str, Any] = summary.get("quota", {}) or {}
        resume = quota.get("deferred_until") or quota.get("reset_at") or "at the next reset"
        for reason, n in reasons.items():
            step = _NEXT_STEP.get(reason, "run the same command again later")
            lines.append(f"  {n} rows deferred ({reason}): " + step.format(resume=resume))
    return "\n".join(lines)
