"""What a sandbox is started with: ``SandboxConfig`` (one field per ``provisioner sandbox``
flag), the run-time mode settings and their checks, and planned outages.

Apart from the server and the modes so that both import it and neither imports the other:
the modes are built from a config, the server from a config and the modes.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeGuard

from provisioner.errors import UsageError
from provisioner.sandbox.campaigns import SandboxCampaign
from provisioner.sandbox.faults import FaultRule

HEADER_MODES = ("normal", "omit", "garble")
#: How ``--headers garble`` spoils the three headers (each described in docs/sandbox.md).
GARBLE_VARIANTS = ("empty", "negative", "past_reset", "text")
OUTAGE_MODES = ("5xx", "refuse")
#: The fields ``POST /sandbox/modes`` may change; each is a SandboxConfig field and a flag.
MODE_FIELDS = ("shared_consumer", "shared_at", "shared_span", "headers", "garble", "reset")
#: How ``--reset`` moves ``X-RateLimit-Reset`` (each described in docs/sandbox.md): the
#: real window's end, or a reset that is absurd (``huge``: 1e30; ``far``: past year 9999)
#: or moves (``sliding``: now + a window; ``jitter``: one second either way; ``backwards``:
#: a second earlier per creation of the window). The quota counted stays the real window's.
RESET_MODES = ("fixed", "huge", "far", "sliding", "jitter", "backwards")


def check_reset_mode(reset: object, *, name: Callable[[str], str]) -> str:
    """The ``reset`` mode, checked; ValueError if it is not one of ``RESET_MODES``."""
    if not isinstance(reset, str) or reset not in RESET_MODES:
        choices = ", ".join(RESET_MODES)
        raise ValueError(f"{name('reset')} must be one of {choices}, got {reset!r}")
    return reset


def is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_modes(
    shared_consumer: object,
    shared_at: object,
    shared_span: object,
    headers: object,
    garble: object,
    *,
    name: Callable[[str], str],
) -> tuple[int, float, float, str, tuple[str, ...]]:
    """The mode settings, checked and typed; ValueError if they are impossible.

    ``name`` renders a field in the message: ``--shared-at`` for the command line,
    ``shared_at`` for the admin API.
    """
    if isinstance(shared_consumer, bool) or not isinstance(shared_consumer, int):
        raise ValueError(
            f"{name('shared_consumer')} must be a whole number, got {shared_consumer!r}"
        )
    if shared_consumer < 0:
        raise ValueError(f"{name('shared_consumer')} must be >= 0, got {shared_consumer}")
    if not is_number(shared_at) or not 0.0 <= shared_at < 1.0:
        raise ValueError(f"{name('shared_at')} must be a fraction in [0, 1), got {shared_at!r}")
    if not is_number(shared_span) or not 0.0 <= shared_span <= 1.0 - shared_at:
        raise ValueError(
            f"{name('shared_span')} must be between 0 and 1 - {name('shared_at')} "
            f"(the spread ends within the window), got {shared_span!r}"
        )
    if not isinstance(headers, str) or headers not in HEADER_MODES:
        choices = ", ".join(HEADER_MODES)
        raise ValueError(f"{name('headers')} must be one of {choices}, got {headers!r}")
    if not isinstance(garble, tuple | list) or any(v not in GARBLE_VARIANTS for v in garble):
        choices = ", ".join(GARBLE_VARIANTS)
        raise ValueError(f"{name('garble')} variants must be among {choices}, got {garble!r}")
    variants = tuple(str(v) for v in garble)
    return shared_consumer, float(shared_at), float(shared_span), headers, variants


@dataclass(frozen=True, slots=True)
class Outage:
    """An outage planned from the start: ``duration`` seconds beginning ``start`` seconds
    after the sandbox starts; ``mode`` "5xx" (every create gets 503) or "refuse" (every
    create's connection is reset unanswered)."""

    start: float
    duration: float
    mode: str = "5xx"

    def __post_init__(self) -> None:
        if not is_number(self.start) or self.start < 0:
            raise ValueError(f"the start must be a number of seconds >= 0, got {self.start!r}")
        if not is_number(self.duration) or self.duration <= 0:
            raise ValueError(f"the duration must be a number of seconds > 0, got {self.duration!r}")
        if self.mode not in OUTAGE_MODES:
            choices = " or ".join(OUTAGE_MODES)
            raise ValueError(f"the mode must be {choices}, got {self.mode!r}")


def parse_outage(text: str) -> Outage:
    """Read ``START:DURATION[:MODE]`` (the ``--outage`` flag); ValueError says what is wrong."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f"expected START:DURATION[:MODE], got {text!r}")
    try:
        start, duration = float(parts[0]), float(parts[1])
    except ValueError:
        raise ValueError(f"START and DURATION must be seconds, got {text!r}") from None
    return Outage(start, duration, parts[2] if len(parts) == 3 else "5xx")


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """Everything a sandbox is started with; each field mirrors a ``provisioner sandbox`` flag.

    Raises ``UsageError`` on a value the sandbox cannot honour, naming the flag.
    """

    host: str = "127.0.0.1"
    port: int = 0
    api_keys: tuple[str, ...] = ("sandbox-key",)
    daily_quota: int = 100
    window_seconds: int = 86400
    latency_ms: float = 0.0
    error_rate: float = 0.0
    seed: int | None = None
    repeat_counts: bool = False
    faults: tuple[FaultRule, ...] = ()
    shared_consumer: int = 0
    shared_at: float = 0.0
    shared_span: float = 0.0
    headers: str = "normal"
    garble: tuple[str, ...] = ()
    reset: str = "fixed"
    outages: tuple[Outage, ...] = ()
    tls_cert: str | None = None
    tls_key: str | None = None
    #: None: every campaign id is accepted and ``/campaigns/list`` is not served.
    campaigns: tuple[SandboxCampaign, ...] | None = None
    invalid_counts: bool = False
    keys_without_campaigns_list: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port must be between 0 and 65535, got {self.port}")
        if not self.api_keys:
            raise UsageError("the sandbox needs at least one --api-key")
        for index, key in enumerate(self.api_keys, start=1):
            # The key itself is never put in a message: only its position.
            if not key or key != key.strip() or any(c.isspace() for c in key):
                raise UsageError(f"--api-key #{index} is empty or contains whitespace")
        if self.daily_quota < 0:
            raise UsageError(f"--daily-quota must be >= 0, got {self.daily_quota}")
        if self.window_seconds < 1:
            raise UsageError(f"--window-seconds must be >= 1, got {self.window_seconds}")
        if not 0 <= self.latency_ms < math.inf:
            raise UsageError(f"--latency-ms must be a finite number >= 0, got {self.latency_ms}")
        if not 0.0 <= self.error_rate <= 1.0:
            raise UsageError(f"--error-rate must be between 0 and 1, got {self.error_rate}")
        try:
            check_modes(*(getattr(self, f) for f in MODE_FIELDS[:5]), name=_flag)
            check_reset_mode(self.reset, name=_flag)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if self.garble and self.headers != "garble":
            raise UsageError(f"--garble needs --headers garble, not --headers {self.headers}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise UsageError("--tls-cert and --tls-key go together: give both or neither")
        if self.invalid_counts and self.campaigns is None:
            raise UsageError("--invalid-counts needs --campaigns FILE (which ids are invalid)")
        for index, key in enumerate(self.keys_without_campaigns_list, start=1):
            if key not in self.api_keys:
                raise UsageError(
                    f"--key-without-campaigns-list #{index} is not one of the --api-key "
                    "values; give the key with --api-key too"
                )

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server's TLS context when ``tls_cert``/``tls_key`` are set (https), else None.

        Raises ``UsageError`` naming the files when they cannot be loaded.
        """
        if self.tls_cert is None or self.tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(
                f"--tls-cert {self.tls_cert} / --tls-key {self.tls_key} cannot be loaded: "
                f"{getattr(exc, 'strerror', None) or exc}; give a PEM certificate (chain) and "
                f"its unencrypted PEM private key"
            ) from None
        return context
