"""A symlink (or hard link) planted in a shared output folder or next to the store is never
written through: the output temporaries, the final files, the metrics file and the lock."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from provisioner._core.models import Outcome, Status
from provisioner._outputs.files import FileSink, OutputFolder
from provisioner._outputs.metrics import MetricsFile
from provisioner._state.lock import RunLock
from provisioner.errors import StateError
from tests.unit.test_metrics import snap

SECRET = b"precious: must survive the run\n"
NAMES = ("results.jsonl", "failures.jsonl", "deferred.csv", "summary.json")
#: The fixed temporary names earlier versions used, and so an attacker would plant.
OLD_TEMPORARIES = (*tuple(f".{name}.tmp" for name in NAMES), ".deferred.csv.spool.tmp")


def victim(tmp_path: Path, name: str) -> Path:
    """A file outside the output folder that a link points to."""
    target = tmp_path / "victims" / name
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(SECRET)
    return target


def plant(folder: Path, names: tuple[str, ...], tmp_path: Path) -> list[Path]:
    """A symlink at each of ``names`` in ``folder`` to its own victim; the victims."""
    folder.mkdir(exist_ok=True)
    targets = []
    for name in names:
        target = victim(tmp_path, name.strip("."))
        (folder / name).symlink_to(target)
        targets.append(target)
    return targets


def run_sink(out: Path, header: tuple[str, ...] | None) -> None:
    folder = OutputFolder(out)
    folder.prepare()
    sink = FileSink(folder, deferred_header=header)
    sink.write(Outcome(2, Status.CREATED, "c1", "s1", (("campaign_id", "c1"),), 1, 201, 1.0))
    sink.write(Outcome(3, Status.DEFERRED, "c2", "s2", (("campaign_id", "c2"),)))
    sink.write(Outcome(4, Status.FAILED, "c3", None, (("campaign_id", "c3"),), error="x"))
    sink.commit({"run_id": "r"})


@pytest.mark.parametrize("header", [("campaign_id",), None], ids=["csv", "jsonl"])
def test_links_at_the_old_temporary_names_are_not_written_through(
    tmp_path: Path, header: tuple[str, ...] | None
) -> None:
    """Links planted at the fixed temporary names leave their targets untouched."""
    out = tmp_path / "out"
    targets = plant(out, OLD_TEMPORARIES, tmp_path)
    run_sink(out, header)
    assert all(t.read_bytes() == SECRET for t in targets)
    assert all((out / name).is_file() and not (out / name).is_symlink() for name in NAMES)
    assert not [p for p in out.iterdir() if p.is_symlink()]  # stale ones removed, not followed


def test_links_at_the_final_names_are_replaced_not_followed(tmp_path: Path) -> None:
    """A link at a final name is replaced by the new file; its target is untouched."""
    out = tmp_path / "out"
    targets = plant(out, NAMES, tmp_path)
    run_sink(out, ("campaign_id",))
    assert all(t.read_bytes() == SECRET for t in targets)
    assert b'"c1"' in (out / "results.jsonl").read_bytes()


def test_a_link_at_the_lock_file_is_refused_and_its_target_kept(tmp_path: Path) -> None:
    """A symlink at ``<state>.lock`` stops the run (StateError); the target is not emptied."""
    (target,) = plant(tmp_path / "state", ("s.sqlite3.lock",), tmp_path)
    with pytest.raises(StateError, match="lock file"):
        RunLock.acquire(tmp_path / "state" / "s.sqlite3")
    assert target.read_bytes() == SECRET


def test_a_hard_link_at_the_lock_file_is_refused_and_its_target_kept(tmp_path: Path) -> None:
    """A hard link at ``<state>.lock`` to another file is refused; the file is not emptied."""
    target = victim(tmp_path, "hard")
    os.link(target, tmp_path / "s.sqlite3.lock")
    with pytest.raises(StateError, match="lock file"):
        RunLock.acquire(tmp_path / "s.sqlite3")
    assert target.read_bytes() == SECRET


def test_links_beside_the_metrics_file_are_not_written_through(tmp_path: Path) -> None:
    """Links at prometheus-client's temporary name and at the path itself stay unwritten."""
    folder = tmp_path / "textfile"
    name = "m.prom"
    old_temporary = f"{name}.{os.getpid()}.{threading.current_thread().ident}"
    targets = plant(folder, (old_temporary, name), tmp_path)
    MetricsFile(folder / name).update(snap(retries=3))
    assert all(t.read_bytes() == SECRET for t in targets)
    assert not (folder / name).is_symlink()
    assert b"provisioner_retries" in (folder / name).read_bytes()


#: What `export` writes: the four files, or results.csv with --format csv.
EXPORTS = {"files": NAMES, "csv": ("results.csv",)}


@pytest.mark.parametrize("export_format", sorted(EXPORTS))
def test_export_never_writes_through_a_planted_link(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], export_format: str
) -> None:
    """`provisioner export` (the four files, or --format csv's results.csv) with links at the
    final names and at the fixed temporary names: the links' targets stay untouched and the
    exported files are new regular files."""
    from provisioner._cli import main as cli
    from provisioner._state.opening import open_store

    state = tmp_path / "state.sqlite3"
    store = open_store(state)
    store.begin_run("run-1", "m.csv", 1.0, ("campaign_id",), {})
    store.record("run-1", "ws", ("c1", "s:s1"), Outcome(2, Status.CREATED, "c1", "s1",
                 (("campaign_id", "c1"),), 1, 201, 1.0))  # fmt: skip
    store.finish_run("run-1", 2.0, 0, {"created": 1}, {"run_id": "run-1"})
    store.close()
    names = EXPORTS[export_format]
    out = tmp_path / "exported"
    targets = plant(out, (*names, *(f".{name}.tmp" for name in names)), tmp_path)
    args = ["export", "--run", "run-1", "--out", str(out), "--state", str(state)]
    if export_format == "csv":
        args += ["--format", "csv"]
    assert cli.main(args) == 0, capsys.readouterr().err
    assert all(t.read_bytes() == SECRET for t in targets)
    for name in names:
        assert (out / name).is_file()
        assert not (out / name).is_symlink()
    assert b"c1" in (out / names[0]).read_bytes()
