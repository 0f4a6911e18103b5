"""Files created in folders that someone else may write to, without following their links.

An output folder can be shared or world-writable (a run as root from cron into /tmp, a
team folder): any fixed name in it (``.results.jsonl.tmp``) can be a planted symlink,
and ``open(path, "wb")`` would truncate and overwrite whatever the link points to. So a
temporary here is always a *new* file under a name nobody can guess, created with
``O_CREAT | O_EXCL | O_NOFOLLOW``: the call fails rather than open anything that exists,
a link included. It is then renamed over its final name, and a rename replaces a link
itself, never the link's target.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat
from pathlib import Path

__all__ = ["TEMPORARY_SUFFIX", "create_temporary", "open_no_follow", "remove_stale"]

#: Every temporary is ``.<final name>.<random>.tmp``.
TEMPORARY_SUFFIX = ".tmp"

_CREATE = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def create_temporary(folder: Path, name: str) -> tuple[int, Path]:
    """A new, empty, hidden file in ``folder`` that becomes ``name`` later: (fd, path).

    Mode 0666 less the umask, as ``open`` would give the final file. Raises OSError.
    """
    for _ in range(16):
        path = Path(folder) / f".{name}.{secrets.token_hex(8)}{TEMPORARY_SUFFIX}"
        try:
            return os.open(path, _CREATE, 0o666), path
        except FileExistsError:  # 64 random bits taken: someone is guessing; draw again
            continue
    raise FileExistsError(f"no free temporary name for {name} in {folder}")


def open_no_follow(path: Path, flags: int, mode: int = 0o644) -> int:
    """``os.open`` that refuses a symlink at ``path`` (OSError ELOOP) and any file that is
    not a regular file with one link (a planted hard link to another file)."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        info = os.fstat(fd)
        if not _is_plain(info):
            raise OSError(
                f"{path} is not a plain file (a special file or a hard link to another file)"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def _is_plain(info: os.stat_result) -> bool:
    return stat.S_ISREG(info.st_mode) and info.st_nlink == 1


def remove_stale(folder: Path, names: tuple[str, ...]) -> None:
    """Remove the temporaries a dead run left for ``names`` (and the old fixed ones).

    Only called while holding the folder's lock, so none of them is a live run's.
    Unlinking removes a planted link itself, never its target.
    """
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            for name in names:
                prefix = f".{name}."
                if entry.name.startswith(prefix) and entry.name.endswith(TEMPORARY_SUFFIX):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                    break


def describe_file(path: Path) -> dict[str, object]:
    """A committed file's size and SHA-256, for a reader to check it has this run's file."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:  # our own new file, not a name someone could plant
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return {"bytes": size, "sha256": digest.hexdigest()}


def fsync_folder(path: Path) -> None:
    """Make the renames durable; a platform that cannot fsync a folder just skips it."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
