"""A key that ends with a newline (a Kubernetes secret made with --from-file, a key file
written by echo) works from the environment as from a key file, through the CLI (issue 13;
README "Usage > run", after the options table)."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.sandbox.server import Sandbox

from .helpers import KEY, campaigns, cli_env, write_csv
from .test_cli import provisioner, run_args


@pytest.mark.parametrize("source", ["environment", "key_file"])
async def test_a_key_with_a_trailing_newline_is_accepted(
    sandbox: Sandbox, tmp_path: Path, source: str
) -> None:
    """BRAZE_API_KEY="KEY\\n" (or a key file "KEY\\n"): the run sends with KEY and the
    sandbox, which accepts only KEY, creates every row."""
    manifest = write_csv(tmp_path / "m.csv", campaigns(2))
    args = run_args(sandbox.url, tmp_path, str(manifest))
    if source == "environment":
        env = cli_env({"BRAZE_API_KEY": KEY + "\n"})
    else:
        key_file = tmp_path / "key"
        key_file.write_text(KEY + "\n")
        env = cli_env({"BRAZE_API_KEY": "", "PROVISIONER_API_KEY_FILE": str(key_file)})
    code, _, err = await provisioner(*args, env=env)
    assert code == 0, err
    assert len(sandbox.ledger.created) == 2
    assert sandbox.ledger.by_status.get("401", 0) == 0
