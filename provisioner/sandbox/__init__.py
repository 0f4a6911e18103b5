"""A Braze look-alike on loopback for tests, benchmarks and ``make run``.

Apart from the tool: it imports only ``provisioner.errors`` and ``provisioner._core``, and
nothing in the tool imports it except the ``provisioner sandbox`` command.
"""

from __future__ import annotations

from provisioner.sandbox.config import Outage, SandboxConfig, parse_outage
from provisioner.sandbox.faults import FaultRule, load_faults
from provisioner.sandbox.server import Sandbox, serve

__all__ = [
    "FaultRule",
    "Outage",
    "Sandbox",
    "SandboxConfig",
    "load_faults",
    "parse_outage",
    "serve",
]
