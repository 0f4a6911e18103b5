"""Test doubles for code that uses the provisioner: a scripted sender and a fake clock.

Public and supported, for the project's tests and for users testing their own code around
a run. Nothing in the tool imports this package; it may import the tool's internals.
"""

from __future__ import annotations

from provisioner.testing.clock import FakeClock
from provisioner.testing.sender import (
    FAKE_URL,
    Request,
    ScriptedSender,
    Step,
    connect_failed,
    created,
    duplicate,
    in_doubt,
    invalid,
    key_refused,
    queued,
    rate_limited,
    redirected,
    server_error,
)

__all__ = [
    "FAKE_URL",
    "FakeClock",
    "Request",
    "ScriptedSender",
    "Step",
    "connect_failed",
    "created",
    "duplicate",
    "in_doubt",
    "invalid",
    "key_refused",
    "queued",
    "rate_limited",
    "redirected",
    "server_error",
]
