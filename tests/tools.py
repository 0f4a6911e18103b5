"""The external programs the tests run (checkers, promtool, cron): where each is found.

A checker the dev extra installs (hadolint, shellcheck, kubernetes-validate) is looked
up in this venv's bin, then on PATH: :func:`tool`. A program only Debian's packages ship
(promtool from ``prometheus``, the cron daemon from ``cron``) is taken from PATH when
installed, else fetched without installing anything: ``apt-get download`` of the package
and the one file taken out of the .deb, cached under the venv (``.venv/.cache/debian``),
so only the first session on a machine downloads it (xdist workers wait on a file lock
for the one that does). :func:`debian_tool` returns it; when it can be neither found nor
fetched the test fails, naming the fix, unless the tool's ``PROVISIONER_TESTS_ALLOW_NO_*``
variable is 1 (then it skips), as the PostgreSQL fixture does: a green suite must have
run these tests.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NoReturn

import pytest

#: Where the checkers the dev extra installs live (this venv's bin), then PATH.
TOOL_PATH = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def tool(name: str) -> str | None:
    """The checker ``name`` (shellcheck, hadolint, ...) from the venv or PATH, if any."""
    return shutil.which(name, path=TOOL_PATH)


@dataclass(frozen=True, slots=True)
class DebianTool:
    """A program a Debian package ships: its name, the package, its path in the .deb."""

    name: str
    package: str
    member: str  # e.g. usr/bin/promtool
    #: Set to 1 to let its tests skip on a machine that can neither find nor fetch it.
    opt_out: str


PROMTOOL = DebianTool(
    "promtool", "prometheus", "usr/bin/promtool", "PROVISIONER_TESTS_ALLOW_NO_PROMTOOL"
)
CRON = DebianTool("cron", "cron", "usr/sbin/cron", "PROVISIONER_TESTS_ALLOW_NO_CRON")


class FetchFailed(Exception):
    """The package could not be downloaded or unpacked; the message says why."""


def cache_dir() -> Path:
    """Where fetched tools are kept: the venv running the tests, else the temp folder."""
    if sys.prefix != sys.base_prefix:
        return Path(sys.prefix) / ".cache" / "debian"
    return Path(tempfile.gettempdir()) / "provisioner-tests-debian"


def debian_tool(wanted: DebianTool, env: Mapping[str, str] = os.environ) -> str:
    """The path of ``wanted``: installed (PATH, then the package's own folder), else
    cached, else fetched now; a failure (or a skip under its opt-out) otherwise."""
    member = PurePosixPath("/", wanted.member)
    installed = shutil.which(wanted.name, path=os.pathsep.join([TOOL_PATH, str(member.parent)]))
    if installed is not None:
        return installed
    try:
        return str(fetch(wanted))
    except FetchFailed as exc:
        missing(wanted, str(exc), env)


def missing(
    wanted: DebianTool, why: str, env: Mapping[str, str] = os.environ, *, fix: str = ""
) -> NoReturn:
    """End a test that needs ``wanted``: a failure naming ``fix`` (by default: install
    the package, or let the tests fetch it), or a skip under its opt-out."""
    fix = f"{why}; " + (
        fix
        or f"install it (apt-get install {wanted.package}) or let the tests fetch it"
        " (apt-get update, then rerun)"
    )
    if env.get(wanted.opt_out) == "1":
        pytest.skip(fix)
    pytest.fail(f"{fix}, or set {wanted.opt_out}=1 to skip these tests", pytrace=False)


def fetch(wanted: DebianTool, cache: Path | None = None) -> Path:
    """``wanted`` from the cache (default :func:`cache_dir`), downloaded and unpacked into
    it first if need be."""
    folder = (cache or cache_dir()) / wanted.package
    target = folder / wanted.name
    if target.exists():
        return target
    for program in ("apt-get", "dpkg-deb"):
        if shutil.which(program) is None:
            raise FetchFailed(f"{wanted.name} is not installed, nor {program} to fetch it")
    folder.mkdir(parents=True, exist_ok=True)
    # One download per machine: the other xdist workers wait here, then find the file.
    with (folder.parent / f"{wanted.package}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.exists():
            _download_and_unpack(wanted, folder, target)
    return target


def _download_and_unpack(wanted: DebianTool, folder: Path, target: Path) -> None:
    """apt-get download into a scratch folder, the one member out of the .deb, renamed
    into place (a reader never sees half a binary)."""
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        try:
            done = subprocess.run(
                ["apt-get", "download", wanted.package],
                cwd=scratch,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise FetchFailed(f"apt-get download {wanted.package} took over 300 s") from exc
        debs = sorted(Path(scratch).glob(f"{wanted.package}_*.deb"))
        if done.returncode != 0 or not debs:
            last = (done.stderr.strip().splitlines() or ["no .deb appeared"])[-1]
            raise FetchFailed(f"apt-get download {wanted.package} failed: {last}")
        unpacked = Path(scratch) / wanted.name
        with subprocess.Popen(
            ["dpkg-deb", "--fsys-tarfile", str(debs[0])], stdout=subprocess.PIPE
        ) as tar_stream:
            assert tar_stream.stdout is not None
            with tarfile.open(fileobj=tar_stream.stdout, mode="r|") as tar:
                for entry in tar:
                    if entry.isfile() and entry.name.lstrip("./") == wanted.member:
                        source = tar.extractfile(entry)
                        assert source is not None
                        with source, unpacked.open("wb") as sink:
                            shutil.copyfileobj(source, sink)
                        break
            tar_stream.stdout.close()  # the rest of the archive is not needed
        if not unpacked.exists():
            raise FetchFailed(f"{debs[0].name} holds no {wanted.member}")
        unpacked.chmod(0o755)
        os.replace(unpacked, target)
