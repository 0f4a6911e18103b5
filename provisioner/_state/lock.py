"""One run at a time: an exclusive ``flock`` on ``<state>.lock`` holding the owner's pid.

``flock`` is released by the kernel when its process dies, however it dies, so a lock
file can never be left *held* by a dead process; at most its text is left behind. The
text (pid and start time) is only there to name the holder in an error message, and to
tell a clean hand-over (the previous owner emptied the file on release) from a takeover
after a crash (the file still names a process that no longer holds the lock).

The file is never deleted: unlinking a lock file lets two processes lock two different
inodes under the same name. It is opened with ``O_NOFOLLOW`` and must be a plain file with
one link: a symlink or hard link planted at its name (a shared folder) is refused, so the
pid written on acquire and the truncation on release never reach another file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import orjson

from provisioner._core import logs
from provisioner._core.safefile import open_no_follow
from provisioner._core.times import iso
from provisioner.errors import StateError, StateLockedError

#: (pid, start time as ISO 8601 UTC) of a lock's owner.
Holder = tuple[int, str]
T = TypeVar("T")
log = logs.get_logger(__name__)


def lock_path_for(state_path: Path) -> Path:
    """The lock file that guards ``state_path``."""
    return state_path.with_name(state_path.name + ".lock")


class RunLock:
    """An exclusive, non-blocking lock on a state store, held until :meth:`release`."""

    def __init__(self, path: Path, fd: int, took_over_from: Holder | None) -> None:
        self.path = path
        self._fd: int | None = fd
        #: The dead owner whose lock text was left behind, or None after a clean hand-over.
        self.took_over_from = took_over_from

    @classmethod
    def acquire(cls, state_path: Path, wait_s: float = 0.0) -> RunLock:
        """Lock ``state_path`` for this process, or raise StateLockedError naming the holder
        (after waiting up to ``wait_s`` seconds for it to let go: ``--lock-wait``)."""
        path = lock_path_for(state_path)
        return wait_for_lock(lambda: cls._try(state_path, path), wait_s, str(state_path), 0.1)

    @classmethod
    def _try(cls, state_path: Path, path: Path) -> RunLock:
        try:
            fd = lock_file(path)
        except Held as held:
            raise StateLockedError(
                f"state store {state_path} is in use by another run ({held.who});"
                " wait for it to finish, or pass --state PATH to use another store",
                held.holder,
            ) from None
        except OSError as exc:
            raise StateError(
                f"cannot use lock file {path} ({exc.strerror or exc}); remove it if it is a"
                " link or another file, fix its permissions, or pass --state PATH (and put"
                " the store on a local filesystem)"
            ) from None
        return cls(path, fd, take(fd))

    def name_run(self, run_id: str) -> None:
        """Add the run's id to the lock text, so a run waiting for the lock can say whom
        it waits for. Longer than the text it overwrites: no reader sees it empty."""
        if self._fd is not None:
            with contextlib.suppress(OSError, orjson.JSONDecodeError, TypeError):
                info = orjson.loads(os.pread(self._fd, 4096, 0))
                os.pwrite(self._fd, orjson.dumps({**info, "run_id": run_id}) + b"\n", 0)

    def release(self) -> None:
        """Empty the file (a clean hand-over) and unlock it. Safe to call twice."""
        fd, self._fd = self._fd, None
        if fd is not None:
            release(fd)


def wait_for_lock(take: Callable[[], T], wait_s: float, store: str, poll_s: float) -> T:
    """``take()``, retried every ``poll_s`` while it raises StateLockedError, for up to
    ``wait_s`` seconds (0: once). The first refusal logs ``state_lock_wait`` naming the
    holder; a lock still held at the end raises the holder's StateLockedError, saying
    how long it waited. Both backends (the flock, the PostgreSQL leases) wait through it."""
    deadline = time.monotonic() + wait_s
    waited = False
    while True:
        try:
            taken = take()
        except StateLockedError as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                if not waited:
                    raise
                raise StateLockedError(
                    f"{exc}; waited {wait_s:g} s (--lock-wait)", exc.holder
                ) from None
            if not waited:
                waited = True
                holder = {f"holder_{k}": v for k, v in exc.holder.items()}
                log.info("state_lock_wait", state=store, wait_s=wait_s, **holder)
            time.sleep(min(poll_s, left))
            continue
        if waited:
            waited_s = wait_s - max(0.0, deadline - time.monotonic())
            log.info("state_lock_acquired", state=store, waited_s=round(waited_s, 3))
        return taken


class Held(Exception):
    """The lock is held by another live process, named by ``who`` (and ``holder``)."""

    def __init__(self, who: str, holder: dict[str, object] | None = None) -> None:
        super().__init__(who)
        self.who = who
        self.holder: dict[str, object] = holder or {}


def lock_file(path: Path) -> int:
    """Open (creating it) and ``flock`` the lock file ``path``: its fd.

    Raises Held when another process holds it, OSError when it cannot be used (a link,
    a hard link, permissions, a filesystem without flock).
    """
    fd = open_no_follow(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        info = _wait_for_text(fd)
        os.close(fd)
        raise Held(_who(info), info) from None
    except OSError:
        os.close(fd)
        raise
    return fd


def take(fd: int) -> Holder | None:
    """Write this process in a locked file; return the dead owner it names, if any."""
    previous = _parse(os.pread(fd, 4096, 0))
    # pid and started are all that older versions read; host names it across machines.
    info = {"pid": os.getpid(), "started": iso(time.time()), "host": socket.gethostname()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, orjson.dumps(info) + b"\n", 0)
    return previous


def _who(info: dict[str, object] | None) -> str:
    if not info:
        return "pid unknown"
    who = f"pid {info['pid']}, started {info['started']}"
    if info.get("host"):
        who += f", host {info['host']}"
    if info.get("run_id"):
        who += f", run {info['run_id']}"
    return who


def release(fd: int) -> None:
    """Empty a locked file (a clean hand-over) and unlock it by closing ``fd``."""
    # Emptied before unlocking, so the next owner never mistakes us for a crash.
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
    os.close(fd)  # closing the last descriptor drops the flock


def read_holder(state_path: Path) -> Holder | None:
    """The pid and start time written in ``state_path``'s lock file, if any (no locking)."""
    try:
        return _parse(lock_path_for(state_path).read_bytes())
    except OSError:
        return None


def live_holder(state_path: Path) -> int | None:
    """The pid named in the lock file if that process still exists (status uses this
    to tell the live run's intents from those of a run that died)."""
    holder = read_holder(state_path)
    return holder[0] if holder is not None and pid_alive(holder[0]) else None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (it may belong to someone else)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_for_text(fd: int) -> dict[str, object] | None:
    # The holder writes its pid just after locking: give it a moment before saying "unknown".
    for _ in range(20):
        text = os.pread(fd, 4096, 0)
        if _parse(text) is not None:
            data = orjson.loads(text)
            return {k: data.get(k) for k in ("host", "pid", "started", "run_id")}
        time.sleep(0.005)
    return None


def _parse(text: bytes) -> Holder | None:
    try:
        data = orjson.loads(text)
        return int(data["pid"]), str(data["started"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
