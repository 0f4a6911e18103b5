"""Hostile inputs stay within bounds: blank lines give the event loop its turn."""

from __future__ import annotations

import asyncio
import gzip
from pathlib import Path

import pytest

from provisioner._core.models import RawRow
from provisioner._manifest.feed import feed_for
from provisioner._manifest.reader import Manifest
from provisioner._manifest.records import IDLE_AFTER_BLANKS


async def takes_until_the_row(path: Path) -> tuple[int, int]:
    """(take calls, loop ticks seen by another task) until the one real row arrives."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    calls = 0
    with Manifest(str(path), None) as manifest:
        feed = feed_for(manifest)
        while True:
            calls += 1
            chunk, _more = await feed.take(256)
            if chunk:
                assert isinstance(chunk[0], RawRow)
                break
            await asyncio.sleep(0)  # what the runner does between chunks
    task.cancel()
    return calls, ticks


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
async def test_blank_lines_give_the_loop_its_turn(tmp_path: Path, fmt: str) -> None:
    """Runs of blank lines end a take early (no record, more=True), so other tasks run."""
    blanks = 5 * IDLE_AFTER_BLANKS
    path = tmp_path / f"m.{fmt}.gz"
    head = b"campaign_id,send_id\n" if fmt == "csv" else b""
    row = b"c1,s1\n" if fmt == "csv" else b'{"campaign_id": "c1"}\n'
    path.write_bytes(gzip.compress(head + b"\n" * blanks + row))
    calls, ticks = await takes_until_the_row(path)
    assert calls >= 5
    assert ticks >= 4


@pytest.mark.slow
async def test_millions_of_blank_lines_never_hold_the_loop(tmp_path: Path) -> None:
    """A .gz of 20 million blank lines: the loop turns at least every 4,096 of them."""
    blanks = 20_000_000
    path = tmp_path / "m.csv.gz"
    path.write_bytes(gzip.compress(b"campaign_id,send_id\n" + b"\n" * blanks + b"c1,s1\n"))
    calls, ticks = await takes_until_the_row(path)
    assert calls >= blanks // IDLE_AFTER_BLANKS
    assert ticks >= blanks // IDLE_AFTER_BLANKS - 1
