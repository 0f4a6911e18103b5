"""The installed distribution's version: the one literal lives in pyproject.toml.

Read on first use: ``importlib.metadata`` costs tens of milliseconds to import, which
``provisioner --help`` and ``import provisioner`` should not pay.
"""

from __future__ import annotations

from functools import cache


@cache
def package_version() -> str:
    """``provisioner``'s version as installed (``0+unknown`` in a never-installed tree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("provisioner")
    except PackageNotFoundError:  # pragma: no cover - a source tree without an install
        return "0+unknown"
