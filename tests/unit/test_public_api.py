"""The public face: ``provisioner`` exports the supported API, typed, versioned once."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import provisioner
import provisioner.api
import provisioner.errors
from provisioner._braze.client import USER_AGENT


def test_all_is_sorted_and_every_name_resolves() -> None:
    """``__all__`` is sorted and each name it lists is importable from ``provisioner``."""
    assert provisioner.__all__ == sorted(provisioner.__all__)
    for name in provisioner.__all__:
        assert getattr(provisioner, name) is not None


def test_the_face_names_the_same_objects_as_the_old_paths() -> None:
    """``provisioner.api`` and ``provisioner.errors`` keep working and agree with the face."""
    assert provisioner.run is provisioner.api.run
    assert provisioner.run_async is provisioner.api.run_async
    assert provisioner.build_settings is provisioner.api.build_settings
    assert provisioner.RunResult is provisioner.api.RunResult
    assert provisioner.ProvisionerError is provisioner.errors.ProvisionerError


def test_version_comes_from_the_installed_metadata_and_reaches_the_user_agent() -> None:
    """One version literal (pyproject): ``__version__`` and the User-Agent both read it."""
    assert provisioner.__version__ == version("provisioner")
    assert USER_AGENT.startswith(f"provisioner/{provisioner.__version__} ")


def test_package_ships_py_typed() -> None:
    """PEP 561 marker is present so type checkers use the inline annotations."""
    assert (Path(provisioner.__file__).parent / "py.typed").is_file()


def test_importing_the_face_does_not_load_the_pipeline() -> None:
    """``import provisioner`` stays cheap: aiohttp and the runner load on first use only."""
    code = (
        "import sys, provisioner; "
        "print(sorted(m for m in ('aiohttp', 'provisioner.api', 'provisioner._pipeline.runner')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_attribute_raises_attribute_error() -> None:
    """A misspelt name fails like any module attribute (so ``hasattr`` works)."""
    assert not hasattr(provisioner, "rnu")


def test_version_flag_prints_the_installed_version_on_stdout() -> None:
    """``provisioner --version`` prints the metadata version on stdout and exits 0."""
    out = subprocess.run(
        [sys.executable, "-m", "provisioner", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == f"provisioner {version('provisioner')}\n"
