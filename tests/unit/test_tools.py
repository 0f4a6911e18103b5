"""Fetching a Debian package's program for the tests (tests/tools.py): a real .deb built
here and a fake `apt-get` that hands it over, so no network is involved."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.tools import DebianTool, FetchFailed, fetch, missing

TOOL = DebianTool("greeter", "greeter-pkg", "usr/bin/greeter", "PROVISIONER_TESTS_ALLOW_NO_GREETER")

needs_dpkg = pytest.mark.skipif(
    shutil.which("dpkg-deb") is None, reason="dpkg-deb (Debian's dpkg) is not installed"
)


def fake_apt_get(bin_dir: Path, deb: Path | None, calls: Path) -> None:
    """An `apt-get` that logs its arguments and copies ``deb`` into its working folder
    (``apt-get download``), or fails as apt does for an unknown package when it is None."""
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "apt-get"
    body = f'cp "{deb}" .\n' if deb else 'echo "E: Unable to locate package $2" >&2; exit 100\n'
    script.write_text(f'#!/bin/sh\necho "$*" >>"{calls}"\n{body}')
    script.chmod(0o755)


def build_deb(tmp_path: Path) -> Path:
    """A .deb of TOOL's package holding usr/bin/greeter and a file beside it."""
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        "Package: greeter-pkg\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: tests <t@example.com>\nDescription: a test package\n"
    )
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "greeter").write_text("#!/bin/sh\necho hello from the deb\n")
    (root / "usr" / "bin" / "other").write_text("not wanted\n")
    deb = tmp_path / "greeter-pkg_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--build", str(root), str(deb)], check=True, capture_output=True)
    return deb


@needs_dpkg
def test_fetch_unpacks_the_one_program_and_caches_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first fetch runs `apt-get download PACKAGE` and keeps only the program,
    executable; the next one finds it in the cache and downloads nothing."""
    calls = tmp_path / "calls"
    fake_apt_get(tmp_path / "bin", build_deb(tmp_path), calls)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    cache = tmp_path / "cache"
    program = fetch(TOOL, cache)
    assert program == cache / "greeter-pkg" / "greeter"
    done = subprocess.run([str(program)], capture_output=True, text=True, check=True)
    assert done.stdout == "hello from the deb\n"
    assert sorted(p.name for p in (cache / "greeter-pkg").iterdir()) == ["greeter"]
    assert fetch(TOOL, cache) == program
    assert calls.read_text() == "download greeter-pkg\n"  # once


@needs_dpkg
def test_a_failed_download_says_what_apt_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """apt-get's own last line (e.g. no package lists yet) is in the error; nothing is cached."""
    fake_apt_get(tmp_path / "bin", None, tmp_path / "calls")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    with pytest.raises(FetchFailed, match="Unable to locate package greeter-pkg"):
        fetch(TOOL, tmp_path / "cache")
    assert list((tmp_path / "cache" / "greeter-pkg").iterdir()) == []


def test_missing_tool_fails_naming_the_fix() -> None:
    """Neither found nor fetched, and no opt-out: a failure naming apt-get and the variable."""
    with pytest.raises(pytest.fail.Exception) as info:
        missing(TOOL, "no greeter", {})
    assert "apt-get install greeter-pkg" in str(info.value)
    assert "PROVISIONER_TESTS_ALLOW_NO_GREETER=1" in str(info.value)
    with pytest.raises(pytest.fail.Exception):
        missing(TOOL, "no greeter", {TOOL.opt_out: "0"})
    # What stops it may be other than the package: the fix given is named instead.
    with pytest.raises(pytest.fail.Exception, match="not root; run them as root, or set"):
        missing(TOOL, "not root", {}, fix="run them as root")


def test_the_opt_out_makes_it_a_skip() -> None:
    """The tool's PROVISIONER_TESTS_ALLOW_NO_* variable set to 1 turns the failure into a skip."""
    with pytest.raises(pytest.skip.Exception, match="no greeter"):
        missing(TOOL, "no greeter", {TOOL.opt_out: "1"})
