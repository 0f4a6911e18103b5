"""The project's exceptions: one root, one branch per thing that can go wrong.

::

    ProvisionerError                 root; every error the tool raises on purpose
    ├── UsageError          exit 2   the command line or settings are wrong
    │   └── ConfigError     exit 2   the config file or an environment value is wrong
    ├── ManifestError       exit 2   the manifest cannot be read as a whole
    ├── OutputError         exit 2   the output folder cannot be written
    ├── StateError          exit 2   the state store is corrupt, foreign or unwritable
    │   └── StateLockedError exit 75 another live run holds the state store
    ├── RunFailed           (its run's) a finished run did not succeed: RunResult.raise_for_status
    └── TransportError               one request's fate (raised by client.py only)
        ├── ConnectFailed            the request never reached the server: safe to resend
        │   ├── CertificateRejected  the server's TLS certificate failed verification
        │   └── HostUnreachable      DNS, refused connection or TLS/protocol failure
        └── InDoubt                  the request may have reached the server

aiohttp's exceptions are translated into ``TransportError`` in exactly one place,
``client.BrazeClient.create``. No message of any exception here may contain the API
key: messages are built from settings fields, never from request headers.
"""

from __future__ import annotations

from typing import Any


class ProvisionerError(Exception):
    """Root of every error the provisioner raises on purpose."""

    #: The process exit code when this error ends a command.
    exit_code: int = 2


class UsageError(ProvisionerError):
    """The command line or the resulting settings are wrong; nothing was sent."""


class ConfigError(UsageError):
    """A config file, config key or environment value is wrong; nothing was sent."""


class ManifestError(ProvisionerError):
    """The manifest cannot be read as a whole (missing, no ``campaign_id`` column...)."""


class OutputError(ProvisionerError):
    """The output folder cannot be created or written; nothing was sent."""


class StateError(ProvisionerError):
    """The state store cannot be used (corrupt, foreign, newer schema, unwritable)."""


class StateLockedError(StateError):
    """Another live run holds the state store."""

    exit_code = 75


class TransportError(ProvisionerError):
    """A request failed below HTTP; subclasses say whether it may have been received."""

    exit_code = 1


class ConnectFailed(TransportError):
    """The request never reached the server (refused, DNS, connect timeout)."""


class InDoubt(TransportError):
    """The request may have reached the server (read timeout, connection dropped)."""


class CertificateRejected(ConnectFailed):
    """The server's TLS certificate failed verification: nothing was sent (the key never
    left), and resending cannot help until the CA is trusted or the server fixed."""


class HostUnreachable(ConnectFailed):
    """The base URL's host could not be reached at all: its name does not resolve, the
    connection was refused, or the TLS/protocol handshake failed (e.g. https to a plain
    http port). Unlike a connect timeout this is what a mistyped base URL looks like."""

    def __init__(self, message: str, *, host: str, error: str) -> None:
        super().__init__(message)
        self.host = host
        self.error = error


class RunFailed(ProvisionerError):
    """Raised by ``RunResult.raise_for_status()`` for orchestrators that fail a task on an
    exception: ``result`` is the ``provisioner.api.RunResult`` (its summary, counts, exit
    code), ``exit_code`` the run's."""

    def __init__(self, message: str, result: Any) -> None:
        super().__init__(message)
        self.result = result
        self.exit_code = int(result.exit_code)
