"""The run lock: one holder at a time, named in the refusal; crashed holders taken over."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from provisioner._state.lock import RunLock, live_holder, lock_path_for, pid_alive, read_holder
from provisioner.errors import StateError, StateLockedError


def test_holder_text_is_written_and_emptied_on_release(tmp_path: Path) -> None:
    """The lock file names this pid and an ISO UTC start while held, and is empty after."""
    state = tmp_path / "s.sqlite3"
    lock = RunLock.acquire(state)
    holder = read_holder(state)
    assert holder is not None
    assert holder[0] == os.getpid()
    assert holder[1].endswith("Z")
    assert lock.took_over_from is None
    lock.release()
    lock.release()  # idempotent
    assert lock_path_for(state).read_bytes() == b""
    assert read_holder(state) is None


def test_second_acquire_is_refused_naming_the_holder(tmp_path: Path) -> None:
    """A second lock on the same store (even from this process) is StateLockedError, exit 75."""
    state = tmp_path / "s.sqlite3"
    lock = RunLock.acquire(state)
    try:
        with pytest.raises(StateLockedError, match=rf"pid {os.getpid()}, started 20") as info:
            RunLock.acquire(state)
        assert info.value.exit_code == 75
    finally:
        lock.release()
    RunLock.acquire(state).release()  # free again once released


def test_text_left_by_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    """Lock text with no flock behind it (its writer died) is reported in took_over_from."""
    state = tmp_path / "s.sqlite3"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    pid = int(dead.stdout)
    text = {"pid": pid, "started": "2026-01-02T03:04:05Z"}
    lock_path_for(state).write_bytes(orjson.dumps(text))
    assert not pid_alive(pid)
    lock = RunLock.acquire(state)
    assert lock.took_over_from == (pid, "2026-01-02T03:04:05Z")
    lock.release()


def test_garbage_lock_text_is_ignored(tmp_path: Path) -> None:
    """Unreadable lock text neither blocks the lock nor counts as a takeover."""
    state = tmp_path / "s.sqlite3"
    lock_path_for(state).write_bytes(b"\x00garbage")
    lock = RunLock.acquire(state)
    assert lock.took_over_from is None
    lock.release()


def test_uncreatable_lock_file_is_a_state_error(tmp_path: Path) -> None:
    """A lock file that cannot be created raises StateError naming it and the fix."""
    lock_path_for(tmp_path / "s.sqlite3").mkdir()
    with pytest.raises(StateError, match=r"cannot use lock file .*--state PATH"):
        RunLock.acquire(tmp_path / "s.sqlite3")


def test_pid_alive_and_live_holder(tmp_path: Path) -> None:
    """pid_alive: true for this process, false for a reaped child; live_holder names a live
    lock owner only."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert pid_alive(os.getpid())
    assert not pid_alive(child.pid)
    state = tmp_path / "s.sqlite3"
    assert live_holder(state) is None
    lock_path_for(state).write_bytes(orjson.dumps({"pid": child.pid, "started": "x"}))
    assert live_holder(state) is None
    lock = RunLock.acquire(state)
    assert live_holder(state) == os.getpid()
    lock.release()
