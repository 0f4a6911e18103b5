"""Compact outcome records in the SQLite store (``_state/blocks.py``): skipped rows kept as
references to their creations, deferred rows in compressed blocks, read back unchanged."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from provisioner._core.models import Outcome, Row, Skip, Status
from provisioner._pipeline.outcomes import deferred, skipped
from provisioner._state.interface import StateStore
from provisioner._state.opening import open_store
from provisioner._state.schema import Prior

WS = "ws-test"
N = 5000


def _row(i: int, note: str = "n") -> Row:
    cid, sid = f"c{i:06d}", f"s{i:06d}"
    return Row(i + 2, cid, sid, (("campaign_id", cid), ("send_id", sid), ("note", note)))


async def _seed(path: Path, n: int = N) -> None:
    s = open_store(path)
    s.begin_run("run-1", "m.csv", 1.0, None, {})
    for i in range(n):
        r = _row(i)
        key = (r.campaign_id, "s:" + (r.send_id or ""))
        s.record("run-1", WS, key, Outcome(r.line, Status.CREATED, r.campaign_id, r.send_id,
                                           r.columns, attempts=1, http_status=201))  # fmt: skip
        if i % 1000 == 0:
            await s.throttle()
    await s.flush()
    s.finish_run("run-1", 2.0, 0, {}, {})
    s.close()


def _skips(s: StateStore, rows: list[Row]) -> list[Skip]:
    """Each row's Skip as a run builds it, from the store's lookup of its key."""
    keys = [(r.campaign_id, f"s:{r.send_id}") for r in rows]
    priors = s.lookup_many(WS, keys)
    return [
        (r, k, priors[k].send_id, priors[k].run_id, priors[k].at, priors[k].ref)
        for r, k in zip(rows, keys, strict=True)
    ]


def _sizes(path: Path, seq: int) -> tuple[int, int, int]:
    """(plain outcomes rows, rows in blocks, bytes of block data) of run ``seq``."""
    conn = sqlite3.connect(path)
    try:
        plain = conn.execute("SELECT count(*) FROM outcomes WHERE run_seq = ?", (seq,))
        blocked = conn.execute(
            "SELECT coalesce(sum(rows), 0), coalesce(sum(length(data)), 0) FROM blocks"
            " WHERE run_seq = ?",
            (seq,),
        )
        return (plain.fetchone()[0], *blocked.fetchone())
    finally:
        conn.close()


async def test_skipped_rows_are_references_of_a_few_bytes(tmp_path: Path) -> None:
    """A batch of skipped rows equal to their creations costs well under a byte a row of
    block data and no outcomes row; iter_outcomes gives each skipped Outcome back."""
    path = tmp_path / "state.sqlite3"
    await _seed(path)
    s = open_store(path)
    s.begin_run("run-2", "m.csv", 3.0, None, {})
    skips = _skips(s, [_row(i) for i in range(N)])
    assert all(skip[5] is not None for skip in skips)
    for start in range(0, N, 512):
        s.record_skipped("run-2", WS, skips[start : start + 512])
    await s.flush()
    expected = [
        skipped(r, sid, Prior("created", run, when, sid)) for r, _, sid, run, when, _ in skips
    ]
    assert list(s.iter_outcomes("run-2")) == expected
    s.close()
    plain, rows, data = _sizes(path, 2)
    assert (plain, rows) == (0, N)
    assert data < N // 4


async def test_a_skipped_row_unlike_its_creation_is_kept_whole(tmp_path: Path) -> None:
    """A skipped row whose pass-through values changed since its creation (or whose
    creation time or send_id differ) is stored in full: export shows this run's values."""
    path = tmp_path / "state.sqlite3"
    await _seed(path, 10)
    s = open_store(path)
    s.begin_run("run-2", "m.csv", 3.0, None, {})
    skips = _skips(s, [_row(0), _row(1, note="changed"), _row(2), _row(3)])
    skips[2] = (*skips[2][:4], 12.5, skips[2][5])  # another creation time
    skips[3] = (skips[3][0], skips[3][1], "other-id", *skips[3][3:])
    s.record_skipped("run-2", WS, skips)
    await s.flush()
    expected = [skipped(r, sid, Prior("created", run, w, sid)) for r, _, sid, run, w, _ in skips]
    assert list(s.iter_outcomes("run-2")) == expected
    s.close()
    assert _sizes(path, 2)[:2] == (3, 1)


async def test_deferred_rows_are_compressed_blocks(tmp_path: Path) -> None:
    """Deferred outcomes are kept as compressed blocks (a few bytes a row of these rows),
    merged back in line order with the run's other rows, whatever order they came in."""
    path = tmp_path / "state.sqlite3"
    s = open_store(path)
    s.begin_run("run-1", "m.csv", 1.0, None, {})
    expected: list[Outcome] = []
    for i in reversed(range(N)):  # out of order: blocks overlap, the merge sorts
        r = _row(i)
        key = (r.campaign_id, f"s:{r.send_id}")
        if i % 97 == 0:
            outcome = Outcome(r.line, Status.FAILED, r.campaign_id, r.send_id, error="e")
        else:
            outcome = deferred(r, r.send_id, "quota")
        s.record("run-1", WS, key, outcome)
        expected.append(outcome)
        if i % 700 == 0:
            await s.flush()
    await s.flush()
    assert list(s.iter_outcomes("run-1")) == sorted(expected, key=lambda o: o.line)
    assert s.open_problems()["deferred_last_run"] == N - len(range(0, N, 97))
    s.close()
    plain, rows, data = _sizes(path, 1)
    assert (plain, rows) == (len(range(0, N, 97)), N - plain)
    assert data < 20 * rows


async def test_a_skip_run_still_shows_its_creation_after_force(tmp_path: Path) -> None:
    """After --force creates a combination again, an earlier skip run's rows still show
    the creation they skipped for (its send_id and time), not the new one."""
    path = tmp_path / "state.sqlite3"
    await _seed(path, 3)
    s = open_store(path)
    s.begin_run("run-2", "m.csv", 3.0, None, {})
    r = _row(1)
    key = (r.campaign_id, f"s:{r.send_id}")
    (skip,) = _skips(s, [r])
    s.record_skipped("run-2", WS, [skip])
    await s.flush()
    s.finish_run("run-2", 4.0, 0, {}, {})
    s.close()
    s = open_store(path)
    s.begin_run("run-3", "m.csv", 5.0, None, {})
    s.record("run-3", WS, key, Outcome(r.line, Status.CREATED, r.campaign_id, r.send_id,
                                       r.columns, created_at=99.0))  # fmt: skip
    await s.flush()
    (again,) = s.iter_outcomes("run-2")
    s.close()
    assert (again.created_run, again.created_at) == ("run-1", skip[4])
    assert _sizes(path, 2)[:2] == (0, 1)
