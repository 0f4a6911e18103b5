"""What a person at a terminal sees: the live display under a pseudo-terminal, the summary."""

from __future__ import annotations

import asyncio
import os
import pty
import time

from rich.console import Console

from provisioner._outputs.observe import Snapshot
from provisioner._outputs.progress import render
from tests.conftest import SandboxFactory

from .helpers import PYTHON, ROOT, campaigns, cli_env, write_csv
from .test_cli import run_args


def snap(**kw: object) -> Snapshot:
    base: dict[str, object] = {
        "run_id": "r1", "manifest": "m.csv", "workspace": "ws-abc", "started_at": 0.0,
        "elapsed_s": 10.0, "rows_done": 500, "counts": {"created": 480, "failed": 20},
        "requests": 500, "retries": 3, "http_429": 0, "http_by_class": {"2xx": 480},
        "rows_per_s": 50.0, "fraction_read": 0.5, "eta_s": 10.0, "quota_limit": 100,
        "quota_remaining": 40, "quota_reset_at": 86400.0, "paused_until": None,
    }  # fmt: skip
    base.update(kw)
    return Snapshot(**base)  # type: ignore[arg-type]


def text_of(snapshot: Snapshot, now: float = 1000.0) -> str:
    console = Console(width=120, record=True, force_terminal=False)
    console.print(render(snapshot, now))
    return console.export_text()


def test_display_shows_counts_rate_eta_and_quota() -> None:
    """The display names rows done, each status count, the rate, the ETA and quota left."""
    text = text_of(snap())
    for part in ("500 rows", "created 480", "failed 20", "50 rows/s", "ETA 0:00:10",
                 "quota ws-abc: 40 of 100 left"):  # fmt: skip
        assert part in text, (part, text)


def test_display_counts_down_while_paused() -> None:
    """While paused for a quota reset, the display shows the time left."""
    text = text_of(snap(paused_until=1125.0), now=1000.0)
    assert "paused for the quota reset: 0:02:05 left" in text


async def test_pseudo_terminal_run_shows_the_display(
    sandbox_factory: SandboxFactory, tmp_path: os.PathLike[str]
) -> None:
    """On a terminal the run draws the progress display, then prints the human summary."""
    from pathlib import Path

    tmp = Path(tmp_path)
    sandbox = await sandbox_factory(latency_ms=30)
    manifest = write_csv(tmp / "m.csv", campaigns(40))
    master, slave = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "provisioner", *run_args(sandbox.url, tmp, str(manifest)),
        "--concurrency", "2", stdin=asyncio.subprocess.DEVNULL, stdout=slave, stderr=slave,
        env=cli_env({"COLUMNS": "120"}), cwd=ROOT,
    )  # fmt: skip
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)  # the sandbox runs on this loop: let it answer
        try:
            data = await asyncio.to_thread(os.read, master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    out = b"".join(chunks).decode("utf-8", "replace")
    assert "rows/s" in out
    assert "created" in out
    assert "\x1b[" in out  # drawn with terminal control sequences
    assert "finished with exit code 0" in out  # the human summary
    assert "outputs:" in out


def test_display_shows_quota_left_per_workspace() -> None:
    """With several workspaces the display has one quota line each."""
    text = text_of(snap(quotas={"ws-us": (40, 100, 86400.0), "ws-eu": (3, 50, 86400.0)}))
    assert "quota ws-us: 40 of 100 left" in text
    assert "quota ws-eu: 3 of 50 left" in text
