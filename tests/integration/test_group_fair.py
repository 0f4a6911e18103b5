"""Fairness across workspaces in a group (issue 17 item 5): a worker with several
workspaces claims their chunks in turn, not in manifest order, so a manifest sorted by
workspace does not keep the later workspaces waiting behind the first."""

from __future__ import annotations

from pathlib import Path

import orjson
import psycopg

from provisioner.sandbox.server import FaultRule, workspace_label
from tests.conftest import SandboxFactory

from .helpers import cli_env, write_csv
from .test_cli import provisioner
from .test_group import assert_every_line_once, export_group

ENV = {"KEY_US": "key-us", "KEY_EU": "key-eu"}


def two_workspace_config(url: str, tmp_path: Path, chunk: int, us: str = "") -> Path:
    """Workspaces us (the default; ``us``: more of its keys) and eu, ``chunk`` lines a chunk."""
    path = tmp_path / "group.toml"
    path.write_text(
        f'[[workspaces]]\nname = "us"\nbase_url = "{url}"\napi_key_env = "KEY_US"\n'
        f"default = true\n{us}\n"
        f'[[workspaces]]\nname = "eu"\nbase_url = "{url}"\napi_key_env = "KEY_EU"\n\n'
        f"[state]\ngroup_chunk = {chunk}\n"
        "[retry]\nbackoff_base = 0.01\nbackoff_cap = 0.05\nmax_time = 10\n",
        encoding="utf-8",
    )
    return path


async def test_a_workspace_sorted_manifest_is_claimed_in_turn(
    sandbox_factory: SandboxFactory, tmp_path: Path, pg_url: str
) -> None:
    """One worker, a manifest of 4 chunks of workspace us then 4 of eu: eu's first chunk
    is claimed before us's last ones (claims alternate between the workspaces), and the
    group still ends with every row once, each in its own workspace."""
    sandbox = await sandbox_factory(
        api_keys=("key-us", "key-eu"), daily_quota=100_000, window_seconds=3600, latency_ms=20
    )
    size = 50
    # Line 1 is the header: lines 2..200 (chunks 0-3) are us's, 201..400 (4-7) eu's.
    rows = [(f"c{i:04d}", f"s{i:04d}", "us" if i < 4 * size - 1 else "eu") for i in range(399)]
    manifest = write_csv(tmp_path / "m.csv", rows, header=("campaign_id", "send_id", "workspace"))
    cfg = two_workspace_config(sandbox.url, tmp_path, size)
    url = pg_url + "?lease_s=10"
    code, _out, err = await provisioner(
        "run", str(manifest), "--out", str(tmp_path / "w0"), "--state", url, "--group", "g1",
        "--config", str(cfg), "--rate", "5000", "--concurrency", "2", "--log-format", "json",
        env={**cli_env(), **ENV},
    )  # fmt: skip
    assert code == 0, err[-2000:]
    events = [orjson.loads(line) for line in err.splitlines() if line.startswith("{")]
    done = next(e for e in events if e.get("event") == "group_worker_done")
    finished = next(e for e in events if e.get("event") == "run_finished")
    print(f"passes {done['passes']}, {finished['duration_s']} s")  # pytest -s shows them
    with psycopg.connect(pg_url) as conn:
        order = [
            int(r[0])
            for r in conn.execute(
                "SELECT chunk FROM provisioner.group_chunks ORDER BY claimed_at, chunk"
            )
        ]
    assert sorted(order) == list(range(8))
    assert order.index(4) < order.index(3)  # eu did not wait for all of us's chunks
    assert order[:4] == [0, 1, 4, 5]  # two of each workspace in hand, in turn
    created = sandbox.ledger.created
    assert sum(e.workspace == workspace_label("key-eu") for e in created) == 200
    assert sum(e.workspace == workspace_label("key-us") for e in created) == 199
    code, _out, err = await export_group(url, tmp_path / "all")
    assert code == 0, err
    assert_every_line_once(tmp_path / "all", 399)


async def test_a_slow_workspace_does_not_hold_the_reader(
    sandbox_factory: SandboxFactory, tmp_path: Path, pg_url: str
) -> None:
    """One worker, a chunk of workspace us whose every request takes 100 ms one at a time,
    then four chunks of eu: eu's rows start while us has most of its chunk still to send
    (its lane's queue holds the chunk, so the reader is not held until us's rows are
    nearly all sent), and both finish."""
    slow = FaultRule(action="delay", campaign_id="cus", delay_ms=100)
    sandbox = await sandbox_factory(
        api_keys=("key-us", "key-eu"), daily_quota=100_000, window_seconds=3600, faults=(slow,)
    )
    # Line 1 is the header: lines 2..50 (chunk 0) are us's, 51..250 (1-4) eu's.
    rows = [("cus", f"s{i:04d}", "us") for i in range(49)]
    rows += [(f"c{i:04d}", f"s{i:04d}", "eu") for i in range(49, 249)]
    manifest = write_csv(tmp_path / "m.csv", rows, header=("campaign_id", "send_id", "workspace"))
    cfg = two_workspace_config(sandbox.url, tmp_path, 50, us="concurrency = 1\n")
    code, _out, err = await provisioner(
        "run", str(manifest), "--out", str(tmp_path / "w0"), "--state", pg_url, "--group",
        "g1", "--config", str(cfg), "--rate", "5000", "--log-format", "json",
        env={**cli_env(), **ENV},
    )  # fmt: skip
    assert code == 0, err[-2000:]
    us, eu = workspace_label("key-us"), workspace_label("key-eu")
    created = [e.workspace for e in sandbox.ledger.created]
    assert created.count(us) == 49
    assert created.count(eu) == 200
    first_eu = created.index(eu)
    assert created[:first_eu].count(us) < 25  # us's chunk was far from sent
