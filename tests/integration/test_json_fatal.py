"""Under --log-format json a fatal error in the middle of a run is JSON too (issue 13 item
5): the error line a log shipper parses, with the message and the exit code, and no plain
text line anywhere on stderr."""

from __future__ import annotations

from pathlib import Path

import orjson

from tests.conftest import SandboxFactory

from .helpers import campaigns, write_csv
from .test_cli import provisioner, run_args
from .test_filesystem import _limit_file_size, needs_dev_full, results_on_dev_full


@needs_dev_full
async def test_output_disk_full_mid_run_is_a_json_error_line(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """results.jsonl fills the disk after requests went out (ENOSPC from /dev/full): under
    JSON logs every stderr line parses, and the fatal error is one `error` event with its
    message (naming the folder, the reason and the export command) and exit_code 2."""
    sandbox = await sandbox_factory(daily_quota=1000)
    note = "n" * 12_000  # 120 rows of 12 kB fill the 1 MB buffer mid-run
    manifest = write_csv(
        tmp_path / "m.csv",
        [(c, s, note) for c, s in campaigns(120)],
        header=("campaign_id", "send_id", "note"),
    )
    (tmp_path / "out").mkdir()
    code, _, err = await provisioner(
        *run_args(sandbox.url, tmp_path, str(manifest)), "--log-format", "json",
        env=results_on_dev_full(tmp_path),
    )  # fmt: skip
    assert code == 2, err
    assert sandbox.ledger.created  # mid-run: requests had gone out
    events = [orjson.loads(line) for line in err.splitlines()]  # every line is JSON
    errors = [e for e in events if e["event"] == "error"]
    assert len(errors) == 1, err
    (error,) = errors
    assert error["exit_code"] == 2
    assert "No space left on device" in error["message"]
    assert str(tmp_path / "out") in error["message"]
    assert "provisioner export --run " in error["message"]
    assert "Traceback" not in err


async def test_state_store_full_mid_run_is_a_json_error_line(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """The state store cannot grow mid-run (RLIMIT_FSIZE: writes fail with EFBIG): under
    JSON logs every stderr line parses and the one `error` event names the store, with
    exit_code 2."""
    sandbox = await sandbox_factory(daily_quota=100_000)
    manifest = write_csv(tmp_path / "m.csv", campaigns(3000))
    limit = 256 * 1024  # room for the manifest and a fresh store, not for the outcomes
    assert manifest.stat().st_size < limit
    code, _, err = await provisioner(
        *run_args(sandbox.url, tmp_path, str(manifest), "--log-format", "json"),
        preexec_fn=lambda: _limit_file_size(limit),
    )
    assert code == 2, err
    assert sandbox.ledger.created  # mid-run: requests had gone out
    events = [orjson.loads(line) for line in err.splitlines()]
    errors = [e for e in events if e["event"] == "error"]
    assert len(errors) == 1, err
    assert errors[0]["exit_code"] == 2
    assert "state.sqlite3" in errors[0]["message"]
    assert "Traceback" not in err
