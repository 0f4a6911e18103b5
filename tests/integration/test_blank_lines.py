"""A manifest with a long run of blank lines (issue 18 item 8): the loop is never starved
while they are read, so the rows before them are sent meanwhile and a signal is handled
at once: a second SIGTERM ends the drain within seconds, with the outputs written."""

from __future__ import annotations

import asyncio
import gzip
import signal
from pathlib import Path

import pytest

from tests.conftest import SandboxFactory

from .helpers import assert_invariant, outputs, start_cli, wait_for_created
from .test_cli import run_args

#: Blank lines per gzip member; the members are concatenated (gzip allows it), so the
#: file is small and quick to build while reading it takes far longer than the test.
_MEMBER_LINES = 4 << 20


def blank_manifest(path: Path, members: int) -> Path:
    """3 rows, then ``members`` * 4 Mi blank lines, then 2 rows, gzipped."""
    blank = gzip.compress(b"\n" * _MEMBER_LINES, compresslevel=6)
    path.write_bytes(
        gzip.compress(b"campaign_id,send_id\nc0,s0\nc1,s1\nc2,s2\n")
        + blank * members
        + gzip.compress(b"c3,s3\nc4,s4\n")
    )
    return path


async def _created_then_signalled(
    sandbox_factory: SandboxFactory, tmp_path: Path, members: int, signals: int
) -> tuple[int, str]:
    """Start a run on the blank-line manifest; once its 3 rows are created (while the
    blank lines are still being read), send SIGTERM ``signals`` times; (exit code, stderr)."""
    sandbox = await sandbox_factory()
    manifest = blank_manifest(tmp_path / "m.csv.gz", members)
    proc = await start_cli(*run_args(sandbox.url, tmp_path, str(manifest)))
    try:
        # Not held until the blank lines end: the rows before them go at once.
        assert await wait_for_created(sandbox, 3)
        for _ in range(signals):
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
        # A bound against a starved loop (reading the rest would take far longer), not
        # a timing assertion.
        _, err = await asyncio.wait_for(proc.communicate(), 120 if signals == 1 else 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert [e.campaign_id for e in sandbox.ledger.created] == ["c0", "c1", "c2"]
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_a_second_sigterm_during_a_long_run_of_blank_lines_ends_the_run_at_once(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """64 Mi blank lines of a .gz (a minute or more of reading): the 3 rows before them are
    created meanwhile; SIGTERM starts the drain of the rest to deferred.csv, and a second
    one, handled while blank lines are read, ends it: exit 143, the outputs written for
    the rows read, ``manifest_read_to_end`` false."""
    code, err = await _created_then_signalled(sandbox_factory, tmp_path, 16, signals=2)
    assert code == 143, err
    results, failures, deferred, summary = outputs(tmp_path / "out")
    assert sorted(r["campaign_id"] for r in results) == ["c0", "c1", "c2"]
    assert (failures, deferred) == ([], [])
    assert (summary["rows_read"], summary["manifest_read_to_end"]) == (3, False)
    assert_invariant(tmp_path / "out", 3)


@pytest.mark.slow
async def test_one_sigterm_during_blank_lines_drains_the_rest_to_deferred(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """One SIGTERM: the blank lines are read on to the end (the loop keeps its turns) and
    the rows after them are deferred, not sent: every row in one file, exit 143."""
    code, err = await _created_then_signalled(sandbox_factory, tmp_path, 1, signals=1)
    assert code == 143, err
    results, failures, deferred, summary = outputs(tmp_path / "out")
    assert sorted(r["campaign_id"] for r in results) == ["c0", "c1", "c2"]
    assert failures == []
    assert [d["campaign_id"] for d in deferred] == ["c3", "c4"]
    assert summary["manifest_read_to_end"] is True
    assert_invariant(tmp_path / "out", 5)
