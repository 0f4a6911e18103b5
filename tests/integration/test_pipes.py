"""A manifest on a pipe whose writer is slow: the run sends what has arrived and stays
responsive (timers, signals) while the pipe is silent."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from provisioner.sandbox.server import Sandbox

from .helpers import assert_invariant, outputs, start_cli, wait_for_created
from .test_cli import run_args


async def _spawn(sandbox: Sandbox, tmp_path: Path) -> asyncio.subprocess.Process:
    args = [*run_args(sandbox.url, tmp_path, "-"), "--format", "csv", "--log-format", "json"]
    return await start_cli(*args, stdin=True)


async def _created(sandbox: Sandbox, count: int) -> None:
    """Wait (up to 20 s on a busy machine) until the sandbox has created ``count`` rows."""
    if not await wait_for_created(sandbox, count):
        raise AssertionError(f"{len(sandbox.ledger.created)} created, expected {count}")


def _rows(start: int, stop: int) -> bytes:
    return b"".join(b"c%04d,s%04d\n" % (i, i) for i in range(start, stop))


async def test_rows_on_an_open_pipe_are_sent_before_it_closes(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Rows written to a pipe that stays open are created at once, not at end of input."""
    proc = await _spawn(sandbox, tmp_path)
    assert proc.stdin is not None
    proc.stdin.write(b"campaign_id,send_id\n" + _rows(0, 5))
    await proc.stdin.drain()
    await _created(sandbox, 5)  # the pipe is still open: these came from a partial batch
    proc.stdin.write(_rows(5, 12))
    proc.stdin.close()
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    results, _, _, summary = outputs(tmp_path / "out")
    assert sorted(r["campaign_id"] for r in results) == [f"c{i:04d}" for i in range(12)]
    assert_invariant(tmp_path / "out", 12)
    assert (summary["manifest_read_to_end"], summary["rows_read"]) == (True, 12)


async def test_sigterm_while_the_pipe_is_silent_exits_with_outputs(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """SIGTERM while the writer is silent: the run stops within seconds, exits 143, and
    every row it read is in an output file (the drain does not wait for the writer)."""
    proc = await _spawn(sandbox, tmp_path)
    assert proc.stdin is not None
    proc.stdin.write(b"campaign_id,send_id\n" + _rows(0, 3))
    await proc.stdin.drain()
    await _created(sandbox, 3)
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), 30)  # the pipe is never closed
    assert proc.returncode == 143, err.decode()
    assert b"drain_abandoned" in err
    assert b"Traceback" not in err
    assert_invariant(tmp_path / "out", 3)
    _, _, _, summary = outputs(tmp_path / "out")
    assert (summary["manifest_read_to_end"], summary["rows_read"]) == (False, 3)
