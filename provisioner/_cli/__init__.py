"""The ``provisioner`` command: arguments into settings, the runner, errors into exit codes."""

from __future__ import annotations
