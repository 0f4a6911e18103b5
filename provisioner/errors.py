"""The project's exceptions: one root, one branch per thing that can go wrong.

::

    ProvisionerError                 root; every error the tool raises on purpose
    ├── UsageError          exit 2   the command line or settings are wrong
    │   └── ConfigError     exit 2   the config file or an environment value is wrong
    ├── ManifestError       exit 2   the manifest cannot be read as a whole
    ├── OutputError         exit 2   the output folder cannot be written
    │   └── OutputLockedError exit 75 another live run is writing the output folder
    ├── StateError          exit 2   the state store is corrupt, foreign or unwritable
    │   └── StateLockedError exit 75 another live run holds the state store
    ├── RunFailed                    a finished run did not succeed: RunResult.raise_for_status
    ├── TransportError               one request's fate (raised by client.py only)
    │   ├── ConnectFailed            the request never reached the server: safe to resend
    │   │   ├── CertificateRejected  the server's TLS certificate failed verification
    │   │   └── HostUnreachable      DNS, refused connection or TLS/protocol failure
    │   └── InDoubt                  the request may have reached the server
    └── InternalSignal               control flow inside a run; never reaches a caller
        ├── Deferred                 the rest of a lane waits for a later run (quota, outage...)
        ├── Transient                one request failed in a way worth retrying (5xx, resendable)
        └── LineTooLong              a manifest record outgrew max_row_bytes (becomes a row error)

aiohttp's exceptions are translated into ``TransportError`` in exactly one place,
``client.BrazeClient.create``. No message of any exception here may contain the API
key: messages are built from settings fields, never from request headers.

The ``InternalSignal`` branch is raised and caught inside the provisioner (the quota
budget, the retry loop, the manifest reader); it is here so that the whole tree is drawn in
one place, and a caller never sees one. ``exit_code`` values are the README's exit codes
(``provisioner._core.vocab.ExitCode``, stated as ints because this module is the bottom
layer; a unit test pins that they agree).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from provisioner._braze.client import Reply


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


class OutputLockedError(OutputError):
    """Another live run is writing the output folder."""

    exit_code = 75


class StateError(ProvisionerError):
    """The state store cannot be used (corrupt, foreign, newer schema, unwritable)."""


class StateLockedError(StateError):
    """Another live run holds the state store.

    ``holder`` names it as far as the store knows (``host``, ``pid``, ``started``,
    ``run_id``; any may be None): what ``--lock-wait`` logs while it waits."""

    exit_code = 75

    def __init__(self, message: str, holder: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.holder: dict[str, object] = dict(holder or {})


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


class InternalSignal(ProvisionerError):
    """Base of the exceptions that steer a run from inside; none escapes to a caller."""


class Deferred(InternalSignal):
    """Raised by ``QuotaBudget.acquire`` (and the breaker) when the rest of a lane must be
    deferred; ``reason`` is a ``DeferReason`` value, ``resume_at`` when a window reopens."""

    def __init__(self, reason: str, resume_at: float | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.resume_at = resume_at


class Transient(InternalSignal):
    """A failure worth retrying: a 5xx reply, or a transport error that is safe to resend."""

    def __init__(self, reply: Reply | None = None, error: TransportError | None = None) -> None:
        super().__init__(reply.message if reply else str(error))
        self.reply = reply
        self.error = error
        self.budget_spent = False  # set when the retry budget, not the row's caps, stopped it


class LineTooLong(InternalSignal):
    """A record grew past ``max_row_bytes`` at physical line ``line`` (``size`` bytes long);
    the rest of that line was skipped. A signal inside the reader, never raised out of a
    Manifest (the reader turns it into a ``line_too_long`` row error)."""

    def __init__(self, line: int, size: int, head: bytes) -> None:
        super().__init__(line, size)
        self.line = line
        self.size = size
        self.head = head
