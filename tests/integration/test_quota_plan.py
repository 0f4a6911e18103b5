"""The quota plan of `validate` against the sandbox: a short window and a deadline."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import orjson

from provisioner.api import run_pipeline
from provisioner.sandbox.campaigns import SandboxCampaign
from tests.conftest import SandboxFactory

from .helpers import campaigns, cli_env, settings_for, write_csv
from .test_cli import provisioner

WINDOW = 3600
QUOTA = 5


async def test_plan_dates_with_short_window_and_deadline(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """After a run spent this window, validate dates the last of the rest at the quota
    (refused campaigns excluded) and gives the quota per day a deadline needs."""
    rows = campaigns(40)
    book = tuple(SandboxCampaign(c) for c, _ in rows)
    sb = await sandbox_factory(daily_quota=QUOTA, window_seconds=WINDOW, campaigns=book)
    manifest = write_csv(tmp_path / "m.csv", [*rows, ("typo", "t1")])
    (tmp_path / "fast.toml").write_text(
        f"[run]\ndefault_window = {WINDOW}\ndefault_quota = {QUOTA}\nmax_wait = 0\n"
    )
    await run_pipeline(settings_for(sb.url, tmp_path, manifest))
    (window,) = sb.ledger.window_figures()
    assert window.ours == QUOTA  # the rest deferred: 35 to send
    env = cli_env({"PROVISIONER_BASE_URL": sb.url})
    by = window.window_end + 2 * WINDOW  # three more windows start by then
    by_text = datetime.fromtimestamp(by, UTC).isoformat()
    code, out, err = await provisioner(
        "validate", str(manifest), "--state", str(tmp_path / "state.sqlite3"),
        "--config", str(tmp_path / "fast.toml"), "--json", "--by", by_text, env=env,
    )  # fmt: skip
    assert code == 1, err  # the typo row is refused by the campaign check
    (ws,) = orjson.loads(out)["workspaces"]
    assert ws["to_send"] == 35
    assert ws["quota_per_window"] == QUOTA
    # Independently: nothing left now, 5 per window from the reset: the 35th row is
    # created at the start of the 7th window after it.
    expected = window.window_end + (math.ceil(35 / QUOTA) - 1) * WINDOW
    finishes = datetime.fromisoformat(ws["finishes_at"].replace("Z", "+00:00")).timestamp()
    assert finishes == expected
    # 3 windows start by the deadline (reset, +1 h, +2 h) and this one is spent: 35 + 5
    # over 4 windows is 10 per window, 240 per day at one-hour windows.
    assert ws["quota_per_day_needed"] == 10 * 24
    code, text, _ = await provisioner(
        "validate", str(manifest), "--state", str(tmp_path / "state.sqlite3"),
        "--config", str(tmp_path / "fast.toml"), "--by", by_text, env=env,
    )  # fmt: skip
    assert "240 per day" in text
    # The end-of-run summary dates the deferred rows the same way.
    (summary_ws,) = orjson.loads((tmp_path / "out" / "summary.json").read_bytes())["workspaces"]
    assert summary_ws["deferred_rows"] == 35
    assert summary_ws["finishes_at"] == ws["finishes_at"]
