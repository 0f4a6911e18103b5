"""A Braze-compatible ``POST /sends/id/create`` server on loopback.

Used by the integration tests, ``make run``, the benchmarks and by users rehearsing a
migration: real sockets, Braze's documented answers (401/400/413/429/201, rate-limit
headers on every answer for a known key), a per-key quota over fixed epoch-aligned
windows, an in-memory ledger of what was created, and deterministic fault injection
(``sandbox_faults``). See ``docs/sandbox.md`` for the user-facing description.

The create handler is the hot path (benchmarks push ~10k requests/s through it): no
per-request logging, no access log, orjson, and header values recomputed only when a
window rolls over.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import secrets
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType

import orjson
from aiohttp import web

from provisioner.errors import UsageError
from provisioner.sandbox_faults import (
    ERROR_MESSAGES,
    FaultBook,
    FaultRule,
    answer_fault,
    json_response,
    json_type,
    load_faults,
    rules_from_document,
)

__all__ = [
    "MAX_BODY_BYTES",
    "FaultRule",
    "Ledger",
    "LedgerEntry",
    "Sandbox",
    "SandboxConfig",
    "build_app",
    "load_faults",
    "serve",
    "workspace_label",
]

#: Braze answers 413 above 4 MB.
MAX_BODY_BYTES = 4 * 1024 * 1024
#: Braze's identifier rule: "all ASCII characters and at most 64 characters long".
SEND_ID_MAX_CHARS = 64

_RANDOM_ERRORS = (500, 502, 503)


def workspace_label(key: str) -> str:
    """A stable name for the workspace of an API key that does not reveal the key."""
    return "ws-" + hashlib.sha256(key.encode()).hexdigest()[:10]


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


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One creation as the server saw it; ``at`` is the sandbox clock (epoch seconds)."""

    workspace: str
    campaign_id: str
    send_id: str
    at: float


@dataclass(slots=True)
class Ledger:
    """What the sandbox created and how it answered ``/sends/id/create``.

    ``by_status`` counts answers by status code as a string, plus ``"dropped"`` for
    connections closed without an answer; ``total`` is the sum of all of them.
    """

    created: list[LedgerEntry] = field(default_factory=list)
    by_status: dict[str, int] = field(default_factory=dict)
    total: int = 0

    def count(self, status: int | str) -> int:
        """How many requests got this status (or ``"dropped"``)."""
        return self.by_status.get(str(status), 0)

    def to_dict(self) -> dict[str, object]:
        """The document served at ``GET /sandbox/ledger``."""
        # Entries stay dataclasses: orjson writes them as objects keyed by field name.
        return {
            "created": self.created,
            "requests": {"total": self.total, "by_status": dict(self.by_status)},
        }

    def _answered(self, key: str) -> None:
        self.total += 1
        self.by_status[key] = self.by_status.get(key, 0) + 1


class _Workspace:
    """Per-key state: the current window's usage and the combinations created."""

    __slots__ = ("combos", "label", "reset", "used", "window")

    def __init__(self, key: str) -> None:
        self.label = workspace_label(key)
        self.window = -1
        self.used = 0
        self.reset = "0"
        self.combos: set[tuple[str, str]] = set()


class _Invalid:
    __slots__ = ("errors",)

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors


def _parse_create_body(raw: bytes) -> tuple[str, str | None] | _Invalid:
    """(campaign_id, send_id or None) from a request body, or the errors naming fields."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _Invalid(["body: is not valid JSON"])
    if not isinstance(doc, dict):
        return _Invalid([f"body: expected a JSON object, got {json_type(doc)}"])
    errors: list[str] = []
    campaign_id = doc.get("campaign_id")
    if campaign_id is None:
        errors.append("campaign_id: is required")
    elif not isinstance(campaign_id, str):
        errors.append(f"campaign_id: must be a string, got {json_type(campaign_id)}")
    elif not campaign_id:
        errors.append("campaign_id: must not be empty")
    send_id = doc.get("send_id")
    if send_id is None or send_id == "":
        send_id = None  # Braze's "optional": null and "" both mean "generate one"
    elif not isinstance(send_id, str):
        errors.append(f"send_id: must be a string, got {json_type(send_id)}")
    elif not send_id.isascii():
        errors.append("send_id: must be all ASCII characters")
    elif len(send_id) > SEND_ID_MAX_CHARS:
        errors.append(
            f"send_id: must be at most {SEND_ID_MAX_CHARS} characters, got {len(send_id)}"
        )
    if errors or not isinstance(campaign_id, str):
        return _Invalid(errors)
    return campaign_id, send_id if isinstance(send_id, str) else None


class _Service:
    """The sandbox's state and request handlers (one per application)."""

    def __init__(self, config: SandboxConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self.ledger = Ledger()
        self.rng = random.Random(config.seed)
        self.faults = FaultBook(config.faults, self.rng)
        self._clock = clock
        self._quota = config.daily_quota
        self._window = config.window_seconds
        self._limit = str(config.daily_quota)
        self._latency = config.latency_ms / 1000.0
        self._error_rate = config.error_rate
        self._repeat_counts = config.repeat_counts
        self._by_key = {key: _Workspace(key) for key in config.api_keys}
        # Exact header values looked up first: the common case skips parsing.
        self._by_header = {f"Bearer {key}": ws for key, ws in self._by_key.items()}
        # Random per instance so that ids from two sandboxes (or restarts) do not collide.
        self._id_prefix = "sbx_" + secrets.token_hex(4)
        self._next_id = 0

    # -- helpers -------------------------------------------------------------------

    def _authenticate(self, header: str | None) -> _Workspace | str:
        """The workspace of the Authorization header, or why it is refused."""
        if header is None:
            return "Invalid API key: missing Authorization header"
        ws = self._by_header.get(header)
        if ws is not None:
            return ws
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return "Invalid API key: expected 'Authorization: Bearer <key>'"
        return self._by_key.get(token) or "Invalid API key: unknown key"

    def _roll(self, ws: _Workspace) -> float:
        """Move the workspace into the current window; returns the clock reading."""
        now = self._clock()
        window = int(now // self._window)
        if window != ws.window:
            ws.window = window
            ws.used = 0
            ws.reset = str((window + 1) * self._window)
        return now

    def _headers(self, ws: _Workspace) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": self._limit,
            "X-RateLimit-Remaining": str(max(0, self._quota - ws.used)),
            "X-RateLimit-Reset": ws.reset,
        }

    def _reply(
        self,
        status: int,
        payload: dict[str, object],
        ws: _Workspace | None,
    ) -> web.Response:
        self.ledger._answered(str(status))
        return json_response(status, payload, self._headers(ws) if ws is not None else None)

    def _new_send_id(self) -> str:
        self._next_id += 1
        return f"{self._id_prefix}{self._next_id:016x}"

    # -- POST /sends/id/create -----------------------------------------------------

    async def create(self, request: web.Request) -> web.StreamResponse:
        """Braze's create-send-id endpoint, with quota, repeats, ledger and faults."""
        if self._latency:
            await asyncio.sleep(self._latency)
        auth = self._authenticate(request.headers.get("Authorization"))
        ws = auth if isinstance(auth, _Workspace) else None
        # One clock reading per request: it places the request in its window and
        # timestamps a creation, so headers and ledger always agree.
        now = self._roll(ws) if ws is not None else 0.0
        if self._error_rate and self.rng.random() < self._error_rate:
            status = self.rng.choice(_RANDOM_ERRORS)
            return self._reply(status, {"message": ERROR_MESSAGES[status]}, ws)
        if ws is None:
            return self._reply(401, {"message": auth}, None)

        if (request.content_length or 0) > MAX_BODY_BYTES:
            return self._too_large(ws)
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:  # chunked bodies have no Content-Length
            return self._too_large(ws)
        except ConnectionResetError:
            # The client went away mid-body (killed, timed out): nothing to answer or log.
            self.ledger._answered("dropped")
            raise asyncio.CancelledError from None
        parsed = _parse_create_body(raw)
        if isinstance(parsed, _Invalid):
            message = "Invalid request: " + parsed.errors[0]
            return self._reply(400, {"message": message, "errors": parsed.errors}, ws)
        campaign_id, send_id = parsed

        rule = self.faults.pick(campaign_id) if self.faults else None
        if rule is not None and not rule.creates:
            self.ledger._answered(rule.outcome)
            return await answer_fault(rule, request, self._headers(ws), None)

        if send_id is not None and not self._repeat_counts and (campaign_id, send_id) in ws.combos:
            pass  # a repeat: same answer, no quota, no new ledger entry
        elif ws.used >= self._quota:
            return self._reply(429, {"message": "Rate limit exceeded"}, ws)
        else:
            ws.used += 1
            if send_id is None:
                send_id = self._new_send_id()
            ws.combos.add((campaign_id, send_id))
            self.ledger.created.append(LedgerEntry(ws.label, campaign_id, send_id, now))

        if rule is None:
            return self._reply(201, {"message": "success", "send_id": send_id}, ws)
        self.ledger._answered(rule.outcome)
        return await answer_fault(rule, request, self._headers(ws), send_id)

    def _too_large(self, ws: _Workspace) -> web.Response:
        message = f"Payload too large: request bodies are limited to {MAX_BODY_BYTES} bytes"
        return self._reply(413, {"message": message}, ws)

    # -- admin endpoints -------------------------------------------------------------

    async def ledger_view(self, request: web.Request) -> web.Response:
        """GET /sandbox/ledger."""
        return json_response(200, self.ledger.to_dict(), None)

    async def health(self, request: web.Request) -> web.Response:
        """GET /sandbox/health."""
        return json_response(200, {"ok": True}, None)

    async def add_faults(self, request: web.Request) -> web.Response:
        """POST /sandbox/faults: append rules given as ``{"rules": [...]}``."""
        try:
            rules = rules_from_document(orjson.loads(await request.read()))
        except orjson.JSONDecodeError:
            return _admin_error("the body is not valid JSON")
        except ValueError as exc:
            return _admin_error(str(exc))
        self.faults.add(rules)
        return json_response(200, {"rules": len(self.faults)}, None)

    async def clear_faults(self, request: web.Request) -> web.Response:
        """DELETE /sandbox/faults: forget every rule."""
        self.faults.clear()
        return json_response(200, {"rules": 0}, None)


def _admin_error(message: str) -> web.Response:
    return json_response(400, {"message": message}, None)


_SERVICE = web.AppKey("sandbox_service", _Service)


def build_app(config: SandboxConfig, *, clock: Callable[[], float] = time.time) -> web.Application:
    """The sandbox as an aiohttp application; ``clock`` (epoch seconds) drives the windows."""
    service = _Service(config, clock)
    # One byte over the limit so that a body of exactly 4 MB is still accepted.
    app = web.Application(client_max_size=MAX_BODY_BYTES + 1)
    app[_SERVICE] = service
    app.router.add_post("/sends/id/create", service.create)
    app.router.add_get("/sandbox/ledger", service.ledger_view)
    app.router.add_get("/sandbox/health", service.health)
    app.router.add_post("/sandbox/faults", service.add_faults)
    app.router.add_delete("/sandbox/faults", service.clear_faults)
    return app


class Sandbox:
    """A running sandbox: ``async with Sandbox(config) as sb: ... sb.url ... sb.ledger``.

    ``shutdown_timeout`` bounds how long stopping waits for requests in flight (a
    ``delay`` fault may still be sleeping) before cancelling them.
    """

    def __init__(
        self,
        config: SandboxConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        shutdown_timeout: float = 1.0,
    ) -> None:
        self.config = config if config is not None else SandboxConfig()
        self.app = build_app(self.config, clock=clock)
        self._service = self.app[_SERVICE]
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:43123`` (only while started)."""
        if self._url is None:
            raise RuntimeError("the sandbox is not started")
        return self._url

    @property
    def ledger(self) -> Ledger:
        """The live ledger (the same object ``GET /sandbox/ledger`` serialises)."""
        return self._service.ledger

    def add_faults(self, rules: Iterable[FaultRule]) -> None:
        """Append fault rules after the existing ones."""
        self._service.faults.add(rules)

    def clear_faults(self) -> None:
        """Forget every fault rule."""
        self._service.faults.clear()

    async def start(self) -> None:
        """Listen on ``config.host:config.port``; raises ``UsageError`` if it cannot."""
        runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=self._shutdown_timeout,
        )
        await runner.setup()
        host, port = self.config.host, self.config.port
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            await runner.cleanup()
            reason = exc.strerror or str(exc)
            raise UsageError(
                f"the sandbox cannot listen on {host}:{port}: {reason}; "
                "choose another --port (0 picks a free one)"
            ) from None
        self._runner = runner
        bound_port = runner.addresses[0][1]
        shown_host = f"[{host}]" if ":" in host else host
        self._url = f"http://{shown_host}:{bound_port}"

    async def stop(self) -> None:
        """Stop listening and close connections (idempotent)."""
        runner, self._runner, self._url = self._runner, None, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def serve(config: SandboxConfig) -> None:
    """Run a sandbox until SIGINT or SIGTERM.

    Prints the URL as the first line of stdout (flushed, so a parent process can read
    it at once), then one line per API key with its workspace label.
    """
    asyncio.run(_serve(config))


async def _serve(config: SandboxConfig) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with Sandbox(config) as sandbox:
        print(sandbox.url, flush=True)
        for key in config.api_keys:
            print(workspace_label(key), flush=True)
        await stop.wait()
