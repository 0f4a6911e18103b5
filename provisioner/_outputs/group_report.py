"""``export --group`` and ``status --group``: a group of cooperating workers seen whole.

A group's rows are spread over its workers' runs; each chunk's rows are taken from the run
that finished the chunk (a chunk taken over from a dead worker was redone whole by its new
owner, so the dead run's partial outcomes for it are left out). The export therefore holds
every manifest row in exactly one of the four files, once every chunk is done.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from provisioner._core.models import Status
from provisioner._core.times import iso
from provisioner._core.vocab import ExitCode
from provisioner._outputs.files import FileSink, OutputFolder
from provisioner._state import postgres_group as pgg
from provisioner.errors import UsageError


def _pg(store: object, group: str) -> tuple[Any, Any]:
    """The store's read connection and location; UsageError for a SQLite store."""
    conn, location = getattr(store, "_read", None), getattr(store, "location", None)
    if location is None or not hasattr(location, "lease_s"):
        raise UsageError(
            f"--group {group}: groups live in a PostgreSQL store; pass --state postgresql://..."
        )
    return conn, location


def not_done(chunks: list[tuple[int, str, str | None]], size: int) -> list[str]:
    """The chunks not done, as line ranges with their state (``lines 501-1000 claimed``)."""
    return [
        f"lines {c * size + 1}-{(c + 1) * size} {state}"
        for c, state, _run in chunks
        if state != "done"
    ]


def export_group(store: Any, group: str, out_dir: Path) -> tuple[dict[str, object], list[str]]:
    """Write the group's four files to ``out_dir`` if every chunk is done; return the
    summary written and the chunks not done (then nothing is written)."""
    conn, location = _pg(store, group)
    with store._read_lock:
        info = pgg.group_info(conn, location, group)
        chunks = pgg.chunk_states(conn, location, group)
    missing = not_done(chunks, info.chunk_rows)
    if missing:
        return {}, missing
    runs = sorted({r for _c, _s, r in chunks if r is not None})
    header = store.run_info(runs[0])[1] if runs else None
    folder = OutputFolder(out_dir)
    folder.prepare()
    sink = FileSink(folder, deferred_header=header)
    counts: Counter[str] = Counter({s.value: 0 for s in Status})
    try:
        for chunk, _state, run_id in chunks:
            assert run_id is not None
            seq = store._seq_of(run_id)
            first, last = chunk * info.chunk_rows + 1, (chunk + 1) * info.chunk_rows
            with store._read_lock:
                outcomes = pgg.chunk_outcomes(conn, location, seq, first, last, store._run_id_of)
            for outcome in outcomes:
                sink.write(outcome)
                counts[outcome.status.value] += 1
    except BaseException:
        sink.abort()
        raise
    if counts[Status.FAILED.value]:
        code = ExitCode.ROWS_FAILED
    elif counts[Status.DEFERRED.value]:
        code = ExitCode.DEFERRED
    else:
        code = ExitCode.OK
    summary: dict[str, object] = {
        "group": group,
        "manifest": info.manifest,
        "rows_total": sum(counts.values()),
        "counts": dict(counts),
        "chunks": len(chunks),
        "chunk_rows": info.chunk_rows,
        "runs": runs,
        "exported_at": iso(time.time()),
        "exit_code": int(code),
    }
    sink.commit(summary)
    return summary, []


def group_status(store: Any, group: str) -> dict[str, object]:
    """The group's progress: chunks by state, and per worker its run, liveness and chunks."""
    conn, location = _pg(store, group)
    with store._read_lock:
        info = pgg.group_info(conn, location, group)
        chunks = pgg.chunk_states(conn, location, group)
        workers = pgg.workers_report(conn, location, group)
    states = Counter(state for _c, state, _r in chunks)
    for w in workers:
        w["started_at"] = iso(float(w["started_at"]))  # type: ignore[arg-type]
    return {
        "group": group,
        "manifest": info.manifest,
        "lines": info.lines,
        "chunk_rows": info.chunk_rows,
        "chunks": {
            "total": len(chunks),
            **{s: states.get(s, 0) for s in ("done", "claimed", "pending")},
        },
        "workers": workers,
    }


def format_group_status(report: dict[str, Any]) -> str:
    """The group's progress as a few lines for a terminal."""
    c = report["chunks"]
    lines = [
        "",
        f"group {report['group']}: {report['manifest']} ({report['lines']} lines,"
        f" {c['total']} chunks of {report['chunk_rows']}): {c['done']} done,"
        f" {c['claimed']} claimed, {c['pending']} pending",
    ]
    for w in report["workers"]:
        live = "live" if w["live"] else "gone"
        lines.append(
            f"  worker {w['worker']}  {live:>4}  run {w['run_id']}  {w['host']} pid {w['pid']}"
            f"  {w['chunks_done']} chunks done, {w['chunks_claimed']} claimed"
        )
    return "\n".join(lines)
