"""The run's named vocabulary: exit codes and deferral reasons, each value written once.

Both are public contract (README "Exit codes", the ``reason`` column of ``deferred.csv``):
the enums only give the values names, so ``ExitCode.DEFERRED == 3`` and
``DeferReason.QUOTA == "quota"`` and every file keeps the bare value.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class ExitCode(IntEnum):
    """The process exit code of a command (README, "Exit codes")."""

    OK = 0  # every row provisioned (or nothing to do)
    ROWS_FAILED = 1  # some rows failed
    USAGE = 2  # usage, config, manifest, output or state error
    DEFERRED = 3  # rows deferred (quota, outage, wait budget) and none failed
    KEY_REFUSED = 4  # aborted: a workspace cannot be used (key refused, redirect, unreachable)
    LOCKED = 75  # another live run holds the state store (EX_TEMPFAIL: try later)
    BROKEN_PIPE = 141  # standard output was a pipe that closed early (128 + SIGPIPE)
    INTERRUPTED = 130  # SIGINT, after in-flight requests finished and outputs were written
    TERMINATED = 143  # SIGTERM, likewise

    @property
    def resumable(self) -> bool:
        """True when a later run picks up where this one stopped (nothing failed for good)."""
        return self in (ExitCode.DEFERRED, ExitCode.INTERRUPTED, ExitCode.TERMINATED)


class DeferReason(StrEnum):
    """Why a row was deferred: the ``reason`` column of ``deferred.csv`` and the summary."""

    QUOTA = "quota"  # the quota window is spent
    RATE_LIMITED = "rate_limited"  # Braze kept answering 429 past --max-wait
    OUTAGE = "outage"  # Braze unavailable for longer than --max-wait (the breaker)
    KEY_REFUSED = "key_refused"  # 401/403/404: the workspace's key cannot be used
    REDIRECTED = "redirected"  # 3xx: the base URL is not the API
    CERTIFICATE_FAILED = "certificate_failed"  # the server's TLS certificate failed
    INTERRUPTED = "interrupted"  # SIGINT/SIGTERM
    OUTPUT_FAILED = "output_failed"  # the output files could not be written
    UNREACHABLE = "unreachable"  # the base URL never answered (DNS, refused, TLS)
