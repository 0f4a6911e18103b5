"""Output into a pipe whose reader has gone (`provisioner ... | head -1`): no traceback, exit
141 (128 + SIGPIPE) as README's "Exit codes" says, and the run's work is done and kept
all the same (issue 13 item 8). `status` is in test_operator_mistakes.py."""

from __future__ import annotations

import asyncio
import os
import shlex
from pathlib import Path

import orjson
import pytest

from provisioner.sandbox.server import Sandbox

from .helpers import PYTHON, assert_invariant, campaigns, cli_env, outputs, write_csv
from .test_cli import provisioner, run_args


async def into_closed_pipe(*args: str) -> tuple[int, bytes]:
    """Run the CLI with stdout a pipe whose read end is already closed (the reader left
    before the first byte, so every write fails); (exit code, stderr)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = await asyncio.create_subprocess_exec(
            PYTHON, "-m", "provisioner", *args,
            stdout=write_end, stderr=asyncio.subprocess.PIPE, env=cli_env(),
        )  # fmt: skip
    finally:
        os.close(write_end)
    _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err


def assert_quiet(err: bytes) -> None:
    """No traceback and no BrokenPipeError on stderr."""
    assert b"Traceback" not in err, err
    assert b"BrokenPipe" not in err, err
    assert b"Exception ignored" not in err, err


async def test_run_json_into_a_closed_pipe_still_does_the_run(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """`run --json` whose summary cannot be printed: exit 141 without a traceback, but the
    rows were created, the output files are complete and the store has the run, so the
    next run skips every row."""
    manifest = write_csv(tmp_path / "m.csv", campaigns(5))
    code, err = await into_closed_pipe(*run_args(sandbox.url, tmp_path, str(manifest)), "--json")
    assert_quiet(err)
    assert code == 141, err
    assert len(sandbox.ledger.created) == 5
    assert_invariant(tmp_path / "out", 5)
    *_, summary = outputs(tmp_path / "out")
    assert summary["counts"]["created"] == 5
    code, _, err2 = await provisioner(*run_args(sandbox.url, tmp_path, str(manifest)))
    assert code == 0, err2
    assert len(sandbox.ledger.created) == 5  # nothing sent again
    results, *_ = outputs(tmp_path / "out")
    assert {r["status"] for r in results} == {"skipped"}


async def test_validate_and_export_into_a_closed_pipe(sandbox: Sandbox, tmp_path: Path) -> None:
    """`validate --json` into a closed pipe ends with 141 and no traceback; `export` prints
    nothing on stdout (its one line goes to stderr), so it writes its files and exits 0."""
    manifest = write_csv(tmp_path / "m.csv", campaigns(3))
    code, _, err = await provisioner(*run_args(sandbox.url, tmp_path, str(manifest), "--json"))
    assert code == 0, err
    state = str(tmp_path / "state.sqlite3")
    code, verr = await into_closed_pipe("validate", str(manifest), "--json", "--state", state)
    assert_quiet(verr)
    assert code == 141, verr
    run_id = (await provisioner("status", "--json", "--state", state))[1]
    rid = orjson.loads(run_id)["runs"][0]["run_id"]
    code, eerr = await into_closed_pipe("export", "--run", rid, "--out", str(tmp_path / "x"),
                                        "--state", state)  # fmt: skip
    assert_quiet(eerr)
    assert code == 0, eerr
    assert_invariant(tmp_path / "x", 3)


async def test_version_into_a_closed_pipe() -> None:
    """`provisioner --version` into a closed pipe: exit 141, no traceback."""
    code, err = await into_closed_pipe("--version")
    assert_quiet(err)
    assert code == 141, err


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"]])
async def test_help_into_a_closed_pipe(args: list[str]) -> None:
    """Help text into a closed pipe: no traceback, exit 0 (argparse drops a help text it
    cannot write, as README says)."""
    code, err = await into_closed_pipe(*args)
    assert_quiet(err)
    assert code == 0, err


async def test_run_json_piped_into_head(sandbox: Sandbox, tmp_path: Path) -> None:
    """`provisioner run --json ... | head -c 10` in a shell with pipefail: head gets the
    first 10 bytes of the summary; the pipeline's code is the run's (0, when the summary fit
    the pipe before head left) or 141 (when it did not); never a traceback, and the run's
    rows are created either way."""
    manifest = write_csv(tmp_path / "m.csv", campaigns(4))
    command = " ".join(
        shlex.quote(a)
        for a in [PYTHON, "-m", "provisioner", *run_args(sandbox.url, tmp_path, str(manifest))]
    )
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", f"set -o pipefail; {command} --json | head -c 10",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=cli_env(),
    )  # fmt: skip
    out, err = await proc.communicate()
    assert_quiet(err)
    assert proc.returncode in (0, 141), err
    assert len(out) == 10  # the summary's first bytes
    assert out.startswith(b"{")
    assert len(sandbox.ledger.created) == 4
    assert_invariant(tmp_path / "out", 4)
