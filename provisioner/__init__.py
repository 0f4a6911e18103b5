"""provisioner: create Braze send ids from a manifest, concurrently, within the quota.

The supported Python API is what this module exports (``__all__``)::

    from provisioner import build_settings, run, ExitCode

    result = run(build_settings(manifest="campaigns.csv", out_dir="out/"))
    if result.exit_code not in (ExitCode.OK, ExitCode.DEFERRED):
        ...

Everything under a ``provisioner._*`` package is internal and may change without notice;
``provisioner.api`` and ``provisioner.errors`` stay importable as before. The names that
would pull in the whole pipeline (aiohttp, the store, the outputs) load on first use
(PEP 562), as does ``__version__`` (importlib.metadata is slow to import), so
``provisioner --help`` does not pay for them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from provisioner._core.models import Status
from provisioner._core.version import package_version
from provisioner._core.vocab import ExitCode
from provisioner.errors import (
    CertificateRejected,
    ConfigError,
    ConnectFailed,
    HostUnreachable,
    InDoubt,
    ManifestError,
    OutputError,
    OutputLockedError,
    ProvisionerError,
    RunFailed,
    StateError,
    StateLockedError,
    TransportError,
    UsageError,
)

if TYPE_CHECKING:
    __version__: str
    from provisioner._config.settings import Settings, build_settings
    from provisioner._outputs.observe import RunObserver, Snapshot
    from provisioner.api import RunResult, RunSummary, run, run_async, run_pipeline

__all__ = [
    "CertificateRejected",
    "ConfigError",
    "ConnectFailed",
    "ExitCode",
    "HostUnreachable",
    "InDoubt",
    "ManifestError",
    "OutputError",
    "OutputLockedError",
    "ProvisionerError",
    "RunFailed",
    "RunObserver",
    "RunResult",
    "RunSummary",
    "Settings",
    "Snapshot",
    "StateError",
    "StateLockedError",
    "Status",
    "TransportError",
    "UsageError",
    "__version__",
    "build_settings",
    "run",
    "run_async",
    "run_pipeline",
]

# name -> the module that defines it; imported on first attribute access.
_LAZY = {
    "RunObserver": "provisioner._outputs.observe",
    "RunResult": "provisioner.api",
    "RunSummary": "provisioner.api",
    "Settings": "provisioner._config.settings",
    "Snapshot": "provisioner._outputs.observe",
    "build_settings": "provisioner._config.settings",
    "run": "provisioner.api",
    "run_async": "provisioner.api",
    "run_pipeline": "provisioner.api",
}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        return package_version()
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'provisioner' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
