"""The four output files are committed so that a reader never takes two runs' files for
one set, and one run at a time writes an ``--out`` folder."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson
import pytest

from provisioner._core.models import Outcome, Status
from provisioner._outputs.files import FileSink, OutputFolder
from provisioner.errors import OutputLockedError

NAMES = ("results.jsonl", "failures.jsonl", "deferred.csv")


class Killed(BaseException):
    """Stands for a kill -9: nothing after it runs, no cleanup (not an OSError)."""


def write_run(out: Path, run: str, folder: OutputFolder | None = None) -> None:
    """A run whose every file (and summary) carries ``run`` as a marker."""
    folder = folder or OutputFolder(out)
    folder.prepare()
    sink = FileSink(folder, deferred_header=("campaign_id", "run"))
    cols = (("campaign_id", "c"), ("run", run))
    sink.write(Outcome(2, Status.CREATED, "c", "s", cols, 1, 201, 1.0))
    sink.write(Outcome(3, Status.FAILED, "c", None, cols, error="x"))
    sink.write(Outcome(4, Status.DEFERRED, "c", None, cols))
    sink.commit({"run_id": run})


def complete_set(out: Path) -> str | None:
    """What a reader following the README takes: the run whose complete set ``out`` holds,
    or None when summary.json is absent (no complete set). Fails on a mix."""
    summary_path = out / "summary.json"
    if not summary_path.exists():
        return None
    summary: dict[str, Any] = orjson.loads(summary_path.read_bytes())
    run = summary["run_id"]
    for name in NAMES:
        data = (out / name).read_bytes()
        assert f'"run":"{run}"'.encode() in data or f",{run}\r\n".encode() in data, (name, run)
    return str(run)


@pytest.mark.parametrize("renames_done", [0, 1, 2, 3])
def test_a_kill_between_the_renames_never_shows_a_mix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, renames_done: int
) -> None:
    """Killed after N of the four renames, the folder is the old set or no set, never a mix."""
    out = tmp_path / "out"
    write_run(out, "old")
    assert complete_set(out) == "old"
    real = __import__("os").replace
    done = 0

    def replace(src: Any, dst: Any) -> None:
        nonlocal done
        if done == renames_done:
            raise Killed
        done += 1
        real(src, dst)

    monkeypatch.setattr("provisioner._outputs.files.os.replace", replace)
    dying = OutputFolder(out)
    with pytest.raises(Killed):
        write_run(out, "new", dying)
    dying.release()  # the kernel drops a killed process's flock...
    (out / ".provisioner.lock").write_text('{"pid": 1, "started": "x"}')  # ...the file stays
    assert complete_set(out) in ("old", None)
    monkeypatch.undo()
    write_run(out, "next")  # the next run takes over the dead one's folder
    assert complete_set(out) == "next"
    assert sorted(p.name for p in out.iterdir()) == sorted([*NAMES, "summary.json"])


def test_the_summary_names_each_file_by_size_and_digest(tmp_path: Path) -> None:
    """summary.json's ``files`` holds each other file's bytes and SHA-256, as committed."""
    write_run(tmp_path, "r")
    files = orjson.loads((tmp_path / "summary.json").read_bytes())["files"]
    for name in NAMES:
        data = (tmp_path / name).read_bytes()
        assert files[name] == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_a_second_writer_of_one_folder_is_refused_until_the_first_ends(tmp_path: Path) -> None:
    """While one run holds --out, another (whatever its store) gets exit 75; after, it can."""
    first = OutputFolder(tmp_path)
    first.prepare()
    with pytest.raises(OutputLockedError, match="another run") as refused:
        OutputFolder(tmp_path).prepare()
    assert refused.value.exit_code == 75
    FileSink(first, deferred_header=None).commit({})
    second = OutputFolder(tmp_path)
    second.prepare()
    second.release()


def test_a_link_at_the_folder_lock_is_refused(tmp_path: Path) -> None:
    """A symlink planted at .provisioner.lock is neither followed nor emptied."""
    target = tmp_path / "victim"
    target.write_bytes(b"keep")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".provisioner.lock").symlink_to(target)
    with pytest.raises(Exception, match="cannot write to the output folder"):
        OutputFolder(out).prepare()
    assert target.read_bytes() == b"keep"
