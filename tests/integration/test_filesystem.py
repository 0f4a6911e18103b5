"""Filesystem faults end to end: a full or vanished output folder after requests were sent,
a state store that cannot grow (full disk). Each ends in one clear line, exit 2, and
nothing lost: the store has every outcome (``export`` writes the files) and the next run
creates nothing twice."""

from __future__ import annotations

import os
import resource
import shutil
from collections import Counter
from pathlib import Path

import orjson
import pytest

from provisioner.sandbox.server import Sandbox
from tests.conftest import SandboxFactory

from .helpers import (
    assert_invariant,
    campaigns,
    cli_env,
    outputs,
    start_cli,
    wait_for_created,
    write_csv,
)
from .test_cli import provisioner, run_args

DEV_FULL = Path("/dev/full")
needs_dev_full = pytest.mark.skipif(
    not DEV_FULL.exists(), reason="/dev/full (writes fail with ENOSPC) is Linux-only"
)


_RESULTS_ON_DEV_FULL = """
import os
from provisioner._core import safefile

_real = safefile.create_temporary


def _full(folder, name):
    fd, path = _real(folder, name)
    if name == "results.jsonl":
        os.close(fd)
        fd = os.open("/dev/full", os.O_RDWR)
    return fd, path


safefile.create_temporary = _full
"""


def results_on_dev_full(tmp_path: Path) -> dict[str, str]:
    """A CLI environment whose run writes results.jsonl to /dev/full (every write ENOSPC),
    through a sitecustomize shim: temporaries are never opened through a planted link."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(_RESULTS_ON_DEV_FULL)
    env = cli_env()
    env["PYTHONPATH"] = f"{shim}{os.pathsep}{env['PYTHONPATH']}"
    return env


def one_error_line(err: str) -> str:
    """The single ``provisioner: error:`` line of a failed command (no traceback)."""
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("provisioner: error:")]
    assert len(errors) == 1, err
    return errors[0]


def run_id_of(line: str) -> str:
    """The run id named in a 'nothing is lost' error line."""
    return line.split("provisioner export --run ", 1)[1].split()[0]


async def export(tmp_path: Path, run_id: str, out: Path) -> None:
    """`provisioner export` of ``run_id`` into ``out``; must succeed."""
    code, _, err = await provisioner(
        "export", "--run", run_id, "--out", str(out), "--state", str(tmp_path / "state.sqlite3")
    )
    assert code == 0, err


def assert_nothing_created_twice(sandbox: Sandbox) -> None:
    """Each (campaign, send_id) the ledger shows was created once."""
    per_combination = Counter((e.campaign_id, e.send_id) for e in sandbox.ledger.created)
    assert max(per_combination.values(), default=1) == 1


@needs_dev_full
@pytest.mark.parametrize(
    ("rows", "note_bytes"),
    [(6, 10), (120, 12_000)],  # fails at the end (commit) / mid-run (the 1 MB buffer fills)
    ids=["at_commit", "mid_run"],
)
async def test_full_output_disk_after_sending_loses_nothing(
    sandbox_factory: SandboxFactory, tmp_path: Path, rows: int, note_bytes: int
) -> None:
    """results.jsonl on a full disk (a real ENOSPC from /dev/full) after requests went out:
    exit 2, one line naming the folder, the reason, the run and the export command; the
    store has every outcome, so export writes complete files, and the next run sends
    only what was not created."""
    sandbox = await sandbox_factory(daily_quota=1000)
    note = "n" * note_bytes
    manifest = write_csv(
        tmp_path / "m.csv",
        [(c, s, note) for c, s in campaigns(rows)],
        header=("campaign_id", "send_id", "note"),
    )
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = await provisioner(
        *run_args(sandbox.url, tmp_path, str(manifest)), env=results_on_dev_full(tmp_path)
    )
    assert code == 2, err
    line = one_error_line(err)
    assert str(out) in line
    assert "No space left on device" in line
    assert "Nothing is lost" in line
    run_id = run_id_of(line)
    assert not (out / "results.jsonl").exists()  # no partial outputs
    created_first = len(sandbox.ledger.created)
    assert created_first > 0
    # With room again, export writes the run's complete files from the store.
    await export(tmp_path, run_id, tmp_path / "exported")
    results, failures, deferred, summary = outputs(tmp_path / "exported")
    assert_invariant(tmp_path / "exported", rows)
    assert summary["exit_code"] == 2
    assert not failures
    assert {r["send_id"] for r in results} == {e.send_id for e in sandbox.ledger.created}
    if rows > 100:  # mid-run: the run stopped sending, the rest is deferred for the next run
        assert deferred
        assert summary["deferred_reasons"] == {"output_failed": len(deferred)}
    else:
        assert not deferred
    # The next run sends only the rows that were not created, then everything is done.
    before = sandbox.ledger.total
    code, _, err = await provisioner(*run_args(sandbox.url, tmp_path, str(manifest)))
    assert code == 0, err
    assert sandbox.ledger.total - before == rows - created_first
    assert len(sandbox.ledger.created) == rows
    assert_nothing_created_twice(sandbox)
    results, *_ = outputs(out)
    expected = Counter(skipped=created_first, created=rows - created_first)
    assert Counter(r["status"] for r in results) == +expected


async def test_output_folder_removed_during_the_run_loses_nothing(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """The output folder is deleted while the run is sending (the manifest comes from a
    pipe, so the run is provably mid-way): exit 2 naming the run and the export command,
    which then writes complete files; the next run sends nothing."""
    sandbox = await sandbox_factory(daily_quota=10_000)
    out = tmp_path / "out"
    proc = await start_cli(
        *run_args(sandbox.url, tmp_path, "-", "--format", "jsonl", "--concurrency", "4"),
        stdin=True,
    )
    assert proc.stdin is not None
    # More than one batch of the reader (512 rows), so that the first batch is sent while
    # the manifest is still open (the reader then waits on the pipe).
    data = b"".join(b'{"campaign_id": "c%d", "send_id": "s%d"}\n' % (i, i) for i in range(600))
    proc.stdin.write(data)
    await proc.stdin.drain()
    await wait_for_created(sandbox)
    assert sandbox.ledger.created
    shutil.rmtree(out)
    proc.stdin.close()  # the manifest ends (communicate() does not close it in 3.11)
    _, err_bytes = await proc.communicate()
    err = err_bytes.decode()
    assert proc.returncode == 2, err
    line = one_error_line(err)
    assert "No such file or directory" in line
    await export(tmp_path, run_id_of(line), out)
    results, _, _, summary = outputs(out)
    assert_invariant(out, 600)
    assert summary["exit_code"] == 2
    assert sorted(r["send_id"] for r in results) == sorted(
        e.send_id for e in sandbox.ledger.created
    )
    total = sandbox.ledger.total
    code, _, err = await provisioner(
        *run_args(sandbox.url, tmp_path, "-", "--format", "jsonl"), stdin=data
    )
    assert code == 0, err
    assert sandbox.ledger.total == total  # every row skipped: nothing sent


async def test_results_name_taken_by_a_folder_stops_before_sending(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """An output name held by a folder (it could not be replaced at the end) is refused
    before any request, naming it."""
    manifest = write_csv(tmp_path / "m.csv", campaigns(3))
    (tmp_path / "out" / "results.jsonl").mkdir(parents=True)
    code, _, err = await provisioner(*run_args(sandbox.url, tmp_path, str(manifest)))
    assert code == 2, err
    assert "results.jsonl" in one_error_line(err)
    assert sandbox.ledger.total == 0


def _limit_file_size(limit: int) -> None:
    # Runs in the child before exec. Python ignores SIGXFSZ, so a write past the limit
    # fails with EFBIG as on a full disk, instead of killing the process.
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


async def full_disk_then_room(sandbox: Sandbox, tmp_path: Path, limit: int) -> str:
    """Run 3000 rows (half without a send_id) with files capped at ``limit`` bytes, then
    again with room; check that the second run finishes the work, creating nothing twice.
    Returns the first run's error line ("" if it fitted)."""
    rows = [*campaigns(1500), *campaigns(1500, with_send_id=False, prefix="n")]
    manifest = write_csv(tmp_path / "m.csv", rows)
    assert manifest.stat().st_size < limit
    args = run_args(sandbox.url, tmp_path, str(manifest), "--concurrency", "8")
    code, _, err = await provisioner(*args, preexec_fn=lambda: _limit_file_size(limit))
    line = one_error_line(err) if code == 2 else ""
    assert code in (0, 1, 2), err
    code, _, err = await provisioner(*args)
    assert code in (0, 1), err
    results, failures, deferred, _ = outputs(tmp_path / "out")
    assert_invariant(tmp_path / "out", len(rows))
    assert not deferred
    assert {f["error"] for f in failures} <= {"in_doubt"}
    assert all(f["campaign_id"].startswith("n") for f in failures)  # only rows without an id
    per_campaign = Counter(e.campaign_id for e in sandbox.ledger.created)
    assert max(per_campaign.values()) == 1  # nothing created twice
    ledger = {e.campaign_id: e.send_id for e in sandbox.ledger.created}
    assert all(ledger[r["campaign_id"]] == r["send_id"] for r in results)
    status = await provisioner("status", "--json", "--state", str(tmp_path / "state.sqlite3"))
    assert status[0] == 0, status[2]
    assert orjson.loads(status[1])["runs"][0]["exit_code"] in (0, 1)
    return line


async def test_state_store_on_a_full_disk_stops_cleanly_and_resumes(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """The state store cannot grow mid-run (RLIMIT_FSIZE: writes fail with EFBIG): exit 2,
    one line naming the store and the fix, no traceback; then a run with room finishes
    the work and no combination is created twice (rows without a send_id that were in
    flight are in doubt, never resent)."""
    sandbox = await sandbox_factory(daily_quota=100_000)
    # Room for the manifest and a fresh store, not for this run's outcomes.
    line = await full_disk_then_room(sandbox, tmp_path, 256 * 1024)
    assert "state.sqlite3" in line
    assert "check the disk" in line
    assert 0 < len(sandbox.ledger.created) < 3000 + 1


@pytest.mark.slow
@pytest.mark.parametrize("kib", [48, 64, 80, 96, 128, 160, 192, 320, 384, 512, 768, 1024])
async def test_full_disk_at_any_size_loses_nothing(
    sandbox_factory: SandboxFactory, tmp_path: Path, kib: int
) -> None:
    """Files capped at many sizes, so the disk fills at different moments (store creation,
    mid-run, the outputs at the end): one clear line or success, then the run with room
    finishes and creates nothing twice."""
    sandbox = await sandbox_factory(daily_quota=100_000)
    line = await full_disk_then_room(sandbox, tmp_path, kib * 1024)
    assert not line or "state store" in line or "Nothing is lost" in line, line


async def test_a_run_into_an_out_folder_another_run_writes_is_refused(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Another live writer of --out (another store): exit 75 at once, nothing sent."""
    from provisioner._outputs.files import OutputFolder

    manifest = write_csv(tmp_path / "m.csv", campaigns(3))
    holder = OutputFolder(tmp_path / "out")
    holder.prepare()
    try:
        code, _, err = await provisioner(*run_args(sandbox.url, tmp_path, str(manifest)))
    finally:
        holder.release()
    assert code == 75, err
    assert "is being written by another run" in one_error_line(err)
    assert not sandbox.ledger.created
    code, _, err = await provisioner(*run_args(sandbox.url, tmp_path, str(manifest)))
    assert code == 0, err
