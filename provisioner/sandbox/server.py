"""A Braze-compatible ``POST /sends/id/create`` server on loopback.

Used by the integration tests, ``make run``, the benchmarks and by users rehearsing a
migration: real sockets, Braze's documented answers (401/400/413/429/201, rate-limit
headers on every answer for a known key), a per-key quota over fixed epoch-aligned
windows, an in-memory ledger of what was created (``ledger.py``), deterministic fault injection
(``faults.py``) and run-time modes: a shared consumer, omitted or garbled headers,
outages (``modes.py``), all set by a ``SandboxConfig`` (``config.py``). See
``docs/sandbox.md`` for the user-facing description.

The create handler is the hot path (benchmarks push ~10k requests/s through it): no
per-request logging, no access log, orjson, header values recomputed only when a
window rolls over, and one comparison each for the modes when they are off.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import signal
import time
from collections.abc import Callable, Iterable
from types import TracebackType

from aiohttp import web

from provisioner._core.identity import workspace_label
from provisioner.errors import UsageError
from provisioner.sandbox.campaigns import CampaignBook, add_campaign_routes
from provisioner.sandbox.config import Outage, SandboxConfig
from provisioner.sandbox.faults import (
    ERROR_MESSAGES,
    FaultBook,
    FaultRule,
    Invalid,
    answer_fault,
    json_response,
    load_faults,
    parse_create_body,
)
from provisioner.sandbox.ledger import Ledger, LedgerEntry, WindowFigures
from provisioner.sandbox.modes import Modes, Workspace, add_admin_routes, refuse_connection

__all__ = [
    "MAX_BODY_BYTES",
    "FaultRule",
    "Ledger",
    "LedgerEntry",
    "Outage",
    "Sandbox",
    "SandboxConfig",
    "WindowFigures",
    "build_app",
    "load_faults",
    "serve",
    "workspace_label",
]

#: Braze answers 413 above 4 MB.
MAX_BODY_BYTES = 4 * 1024 * 1024

_RANDOM_ERRORS = (500, 502, 503)


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
        self._by_key = {key: Workspace(workspace_label(key)) for key in config.api_keys}
        # Exact header values looked up first: the common case skips parsing.
        self._by_header = {f"Bearer {key}": ws for key, ws in self._by_key.items()}
        # Random per instance so that ids from two sandboxes (or restarts) do not collide.
        self._id_prefix = "sbx_" + secrets.token_hex(4)
        self._next_id = 0
        self.modes = Modes(config, started_at=clock())
        self.campaigns = (
            CampaignBook(config.campaigns, created_at=clock())
            if config.campaigns is not None
            else None
        )
        self._unlisting = {f"Bearer {key}" for key in config.keys_without_campaigns_list}

    async def on_startup(self, app: web.Application) -> None:
        """Outages are relative to the start: place them when the sandbox starts serving."""
        self.modes.anchor(self._clock())

    # -- helpers -------------------------------------------------------------------

    def _authenticate(self, header: str | None) -> Workspace | str:
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

    def list_verdict(self, header: str | None) -> str | None:
        """For ``/campaigns/list``: None (allowed), ``"403"``, ``"503"`` (an outage is
        under way: the listing is down too) or the 401 message."""
        now = self._clock()
        if now < self.modes.horizon and self.modes.outage_at(now) is not None:
            return "503"
        auth = self._authenticate(header)
        if not isinstance(auth, Workspace):
            return auth
        return "403" if header in self._unlisting else None

    def list_answered(self, status: str) -> None:
        counts = self.ledger.campaigns_list
        counts[status] = counts.get(status, 0) + 1

    def _invalid_campaign(self, ws: Workspace, message: str) -> web.Response:
        """400 for a campaign the campaign file does not list as an API campaign;
        with ``--invalid-counts`` it spends quota like a creation (429 once spent)."""
        if self.config.invalid_counts:
            if ws.used >= self._quota:
                ws.figures.http_429 += 1
                return self._reply(429, {"message": "Rate limit exceeded"}, ws)
            ws.used += 1
            ws.figures.invalid_counted += 1
        ws.figures.invalid_campaign += 1
        return self._reply(400, {"message": message, "errors": [message]}, ws)

    def _roll(self, ws: Workspace, now: float) -> None:
        """Move the workspace into the window of ``now`` and let the shared consumer act."""
        window = int(now // self._window)
        if window != ws.window:
            ws.window = window
            ws.used = 0
            ws.shared_done = 0
            start = window * self._window
            ws.reset = str(start + self._window)
            ws.figures = self.ledger._window(ws.label, start, start + self._window, self._quota)
        if ws.shared_done < self.modes.shared_consumer:
            self.modes.settle_shared(ws, now, self._quota)

    def settled_ledger(self) -> Ledger:
        """The ledger with the shared consumer's spending brought up to now, so that it
        shows in windows where no request of ours arrived yet."""
        if self.modes.shared_consumer:
            now = self._clock()
            for ws in self._by_key.values():
                self._roll(ws, now)
        return self.ledger

    def _headers(self, ws: Workspace, exhausted: bool = False) -> dict[str, str] | None:
        remaining = 0 if exhausted else max(0, self._quota - ws.used)
        reset = ws.reset
        if self.modes.reset_mode != "fixed":
            reset = self.modes.moved_reset(reset, self._clock(), ws.used)
        if self.modes.header_mode == "normal":
            return {
                "X-RateLimit-Limit": self._limit,
                "X-RateLimit-Remaining": str(remaining),
                "X-RateLimit-Reset": reset,
            }
        return self.modes.odd_headers(self._limit, remaining, reset, ws.window * self._window)

    def _reply(
        self,
        status: int,
        payload: dict[str, object],
        ws: Workspace | None,
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
        # One clock reading per request: it places the request in its window and
        # timestamps a creation, so headers and ledger always agree.
        now = self._clock()
        if now < self.modes.horizon:  # an outage is under way or still to come
            outage = self.modes.outage_at(now)
            if outage is not None:
                return self._outage(request, outage, now)
        auth = self._authenticate(request.headers.get("Authorization"))
        ws = auth if isinstance(auth, Workspace) else None
        if ws is not None:
            self._roll(ws, now)
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
        parsed = parse_create_body(raw)
        if isinstance(parsed, Invalid):
            message = "Invalid request: " + parsed.errors[0]
            return self._reply(400, {"message": message, "errors": parsed.errors}, ws)
        campaign_id, send_id = parsed
        if self.campaigns is not None:
            refusal = self.campaigns.refusal(campaign_id)
            if refusal is not None:
                return self._invalid_campaign(ws, refusal)

        rule = self.faults.pick(campaign_id) if self.faults else None
        if rule is not None and not rule.creates:
            return await self._fault(rule, request, ws, None)

        if send_id is not None and not self._repeat_counts and (campaign_id, send_id) in ws.combos:
            pass  # a repeat: same answer, no quota, no new ledger entry
        elif ws.used >= self._quota:
            ws.figures.http_429 += 1
            return self._reply(429, {"message": "Rate limit exceeded"}, ws)
        else:
            ws.used += 1
            ws.figures.ours += 1
            if send_id is None:
                send_id = self._new_send_id()
            ws.combos.add((campaign_id, send_id))
            self.ledger.created.append(LedgerEntry(ws.label, campaign_id, send_id, now))

        if rule is None:
            return self._reply(201, {"message": "success", "send_id": send_id}, ws)
        return await self._fault(rule, request, ws, send_id)

    async def _fault(
        self, rule: FaultRule, request: web.Request, ws: Workspace, send_id: str | None
    ) -> web.StreamResponse:
        outcome = rule.outcome
        self.ledger._answered(outcome)
        if outcome == "429":
            ws.figures.http_429 += 1
        # A 429 says the quota is gone, whatever the real count: Remaining 0.
        headers = self._headers(ws, exhausted=outcome == "429")
        return await answer_fault(rule, request, headers, send_id)

    def _outage(self, request: web.Request, mode: str, now: float) -> web.StreamResponse:
        """The answer while an outage is under way: nothing is read, checked or created."""
        auth = self._authenticate(request.headers.get("Authorization"))
        if isinstance(auth, Workspace):  # only to count it in its workspace's window
            self._roll(auth, now)
            auth.figures.outage += 1
        if mode == "refuse":
            self.ledger._answered("refused")
            refuse_connection(request)
            # Never written: the transport is gone, which aiohttp takes quietly.
            return web.Response(status=204)
        # No rate-limit headers: the front door answers, the service behind it (which
        # knows the quota) is down.
        return self._reply(503, {"message": ERROR_MESSAGES[503]}, None)

    def _too_large(self, ws: Workspace) -> web.Response:
        message = f"Payload too large: request bodies are limited to {MAX_BODY_BYTES} bytes"
        return self._reply(413, {"message": message}, ws)


_SERVICE = web.AppKey("sandbox_service", _Service)


def build_app(config: SandboxConfig, *, clock: Callable[[], float] = time.time) -> web.Application:
    """The sandbox as an aiohttp application; ``clock`` (epoch seconds) drives the windows."""
    service = _Service(config, clock)
    # One byte over the limit so that a body of exactly 4 MB is still accepted.
    app = web.Application(client_max_size=MAX_BODY_BYTES + 1)
    app[_SERVICE] = service
    app.router.add_post("/sends/id/create", service.create)
    add_campaign_routes(app, service.campaigns, service.list_verdict, service.list_answered)
    add_admin_routes(app, service.modes, service.faults, service.settled_ledger, clock)
    app.on_startup.append(service.on_startup)
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
        """Base URL, e.g. ``http://127.0.0.1:43123`` (``https`` with TLS; only while started)."""
        if self._url is None:
            raise RuntimeError("the sandbox is not started")
        return self._url

    @property
    def ledger(self) -> Ledger:
        """The live ledger (the same object ``GET /sandbox/ledger`` serialises), with the
        shared consumer's spending brought up to now."""
        return self._service.settled_ledger()

    @property
    def modes(self) -> dict[str, object]:
        """The modes in force, as ``GET /sandbox/modes`` shows them."""
        return self._service.modes.to_dict(self._service._clock())

    def set_modes(self, **changes: object) -> None:
        """Change modes like ``POST /sandbox/modes``; ValueError (nothing changed) if bad."""
        self._service.modes.update(changes)

    def start_outage(self, seconds: float, mode: str = "5xx") -> None:
        """An outage of ``seconds`` starting now, like ``POST /sandbox/outage``."""
        self._service.modes.add_outage(self._service._clock(), seconds, mode)

    def end_outages(self) -> None:
        """End the outage under way and cancel those to come (``DELETE /sandbox/outage``)."""
        self._service.modes.end_outages(self._service._clock())

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
        context = self.config.ssl_context()
        await runner.setup()
        host, port = self.config.host, self.config.port
        try:
            await web.TCPSite(runner, host, port, ssl_context=context).start()
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
        scheme = "https" if context is not None else "http"
        self._url = f"{scheme}://{shown_host}:{bound_port}"

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
