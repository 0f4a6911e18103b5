"""Running the pipeline from code: the CLI and orchestrators (Airflow, Dagster, Prefect)
use the same two entry points.

::

    from provisioner.api import build_settings, run

    settings = build_settings(manifest="campaigns.csv", out_dir="out/", cli={"quota": 80})
    result = run(settings)            # blocking; `await run_async(settings)` in a loop
    result.raise_for_status()         # RunFailed unless exit 0 or 3 (deferred)

Called from code, the package logs through the standard ``logging`` module (loggers
under "provisioner"; the host's handlers, levels and format) and never configures
logging nor writes to stdout or stderr itself; only the CLI sets up its own output.

The run itself (the worker pool, the output files, the summary) is
``provisioner._pipeline.pool``; this module is its public face.

Errors are the project's own (``provisioner.errors``): ``ManifestError``, ``OutputError``,
``ConfigError``, ``StateError``, ``StateLockedError``, all ``ProvisionerError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from provisioner._config.settings import Settings, build_settings
from provisioner._outputs.observe import RunObserver
from provisioner._pipeline.pool import RunResult, RunSummary, run_pipeline
from provisioner.errors import RunFailed

__all__ = [
    "RunFailed",
    "RunResult",
    "RunSummary",
    "Settings",
    "build_settings",
    "run",
    "run_async",
    "run_pipeline",
]

#: The documented async name of ``run_pipeline``.
run_async = run_pipeline


def run(settings: Settings, *, observers: Sequence[RunObserver] = ()) -> RunResult:
    """Run the pipeline to the end in a new event loop (for code that is not async)."""
    return asyncio.run(run_pipeline(settings, observers=observers))
