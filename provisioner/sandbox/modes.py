"""The sandbox's run-time modes, the per-key window state they act on, and the admin API.

Modes (see ``docs/sandbox.md``): a shared consumer (another client of the same workspace
spending part of each window's quota), how the rate-limit headers are sent (normal,
omitted, garbled) and outage windows (every create answered 503, or its connection
reset). They live in ``Modes``, which the admin API reads and changes while the sandbox
runs. Kept apart from ``server.py`` so that the server module stays about serving; the
mode settings and their checks are ``config.py``'s (re-exported here).

Everything here is deterministic: the shared consumer acts at fixed points of each
window, outages are fixed spans of the sandbox clock, and garbling draws from its own
seeded RNG so that turning it on does not shift the draws of ``--error-rate`` or faults.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import orjson
from aiohttp import web

from provisioner.sandbox.config import (
    GARBLE_VARIANTS,
    HEADER_MODES,
    MODE_FIELDS,
    OUTAGE_MODES,
    Outage,
    SandboxConfig,
    check_modes,
    check_reset_mode,
    is_number,
    parse_outage,
)
from provisioner.sandbox.faults import FaultBook, json_response, rules_from_document
from provisioner.sandbox.ledger import Ledger, WindowFigures

__all__ = [
    "GARBLE_VARIANTS",
    "HEADER_MODES",
    "MODE_FIELDS",
    "Modes",
    "Outage",
    "Workspace",
    "add_admin_routes",
    "parse_outage",
    "refuse_connection",
]

_LIMIT = "X-RateLimit-Limit"
_REMAINING = "X-RateLimit-Remaining"
_RESET = "X-RateLimit-Reset"


#: A reset past the last second of year 9999 (``--reset far``): no datetime holds it.
FAR_RESET = 253402300800 + 86400

# -- outages ---------------------------------------------------------------------------


@dataclass(slots=True)
class OutageSpan:
    """An outage placed on the sandbox clock: ``[start, end)`` in epoch seconds."""

    start: float
    end: float
    mode: str
    planned: bool = False  # from the config: placed again when the sandbox starts


def refuse_connection(request: web.BaseRequest) -> None:
    """Reset the request's connection at once, unanswered.

    SO_LINGER 0 makes the close send a RST rather than a FIN, the nearest a server can
    come to a refused connection once it has accepted it: the client gets a connection
    reset instead of an answer.
    """
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # best effort: a plain close is nearly as good
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


# -- per-workspace state ---------------------------------------------------------------


class Workspace:
    """Per-key state: the current window's usage and the combinations created."""

    __slots__ = ("combos", "figures", "label", "reset", "shared_done", "used", "window")

    def __init__(self, label: str) -> None:
        self.label = label
        self.window = -1  # no window yet: the first request rolls into its own
        self.used = 0  # creations in the window, ours and the shared consumer's
        self.shared_done = 0  # the shared consumer's creations of this window dealt with
        self.reset = "0"
        self.figures = WindowFigures(label, 0, 0, 0)  # replaced at the first roll
        self.combos: set[tuple[str, str]] = set()


# -- the live modes ----------------------------------------------------------------------


class Modes:
    """The live modes of one sandbox; the admin API and ``Sandbox`` methods change them.

    The server reads ``horizon`` (no outage applies at or after it) and
    ``shared_consumer`` on every request, so that requests pay nothing for modes that
    are off.
    """

    def __init__(self, config: SandboxConfig, started_at: float) -> None:
        self.shared_consumer = config.shared_consumer
        self.shared_at = config.shared_at
        self.shared_span = config.shared_span
        self.header_mode = config.headers
        self.garble = config.garble
        self.reset_mode = config.reset
        self._window = config.window_seconds
        self._planned = config.outages
        # Its own RNG, seeded apart from the sandbox's, so that garbling does not shift
        # which requests --error-rate and the fault probabilities hit.
        seed = config.seed
        self._rng = random.Random(None if seed is None else f"garble:{seed}")
        self.spans: list[OutageSpan] = []
        self.horizon = 0.0
        self.started_at = started_at
        self.anchor(started_at)

    def anchor(self, started_at: float) -> None:
        """Place the configured outages relative to ``started_at`` (the sandbox's start)."""
        self.started_at = started_at
        planned = [
            OutageSpan(started_at + o.start, started_at + o.start + o.duration, o.mode, True)
            for o in self._planned
        ]
        self.spans = planned + [s for s in self.spans if not s.planned]
        self._new_horizon()

    def _new_horizon(self) -> None:
        self.horizon = max((s.end for s in self.spans), default=0.0)

    def outage_at(self, now: float) -> str | None:
        """The mode of the outage under way at ``now`` (the first listed), or None."""
        for span in self.spans:
            if span.start <= now < span.end:
                return span.mode
        return None

    def add_outage(self, now: float, seconds: float, mode: str) -> None:
        """An outage of ``seconds`` starting at ``now``; ValueError if impossible."""
        Outage(0.0, seconds, mode)  # validates
        self.spans.append(OutageSpan(now, now + seconds, mode))
        self._new_horizon()

    def end_outages(self, now: float) -> None:
        """End the outage under way at ``now`` and drop the ones still to come."""
        # Cut short rather than deleted: the shared consumer's creations that fell in
        # the outage still happen at its (new) end.
        self.spans = [s for s in self.spans if s.start < now]
        for span in self.spans:
            span.end = min(span.end, now)
        self._new_horizon()

    def settle_shared(self, ws: Workspace, now: float, quota: int) -> None:
        """Let the shared consumer make the creations due by ``now`` in ``ws``'s window.

        Its creations have fixed times: all at ``shared_at`` of the window, or spread
        evenly over ``shared_span`` from there. One that falls in an outage happens when
        the outage ends (that client retries), unless that is past the window's end. It
        never exceeds the quota: a creation with nothing left is lost (it got a 429).
        Call only while ``ws.shared_done < shared_consumer``.
        """
        n = self.shared_consumer
        first = (ws.window + self.shared_at) * self._window
        step = self.shared_span * self._window / n
        while ws.shared_done < n:
            at = self._after_outages(first + ws.shared_done * step)
            if at > now:
                return
            if ws.used >= quota:
                # The rest of this window's creations are lost too: settle them all at
                # once, so that a consumer larger than the quota costs no loop.
                ws.shared_done = n
                return
            ws.shared_done += 1
            ws.used += 1
            ws.figures.other += 1

    def _after_outages(self, at: float) -> float:
        moved = at < self.horizon
        while moved:
            moved = False
            for span in self.spans:
                if span.start <= at < span.end:
                    at, moved = span.end, True
        return at

    def moved_reset(self, reset: str, now: float, used: int) -> str:
        """``X-RateLimit-Reset`` as the ``reset`` mode sends it (``reset``: the real one)."""
        mode = self.reset_mode
        if mode == "huge":
            return "1e30"
        if mode == "far":
            return str(FAR_RESET)
        if mode == "sliding":
            return str(int(now) + self._window)
        if mode == "jitter":
            return str(int(reset) + self._rng.choice((-1, 0, 1)))
        if mode == "backwards":
            return str(int(reset) - used)
        return reset

    def odd_headers(
        self, limit: str, remaining: int, reset: str, window_start: int
    ) -> dict[str, str] | None:
        """The rate-limit headers when the mode is not "normal": None when omitted."""
        if self.header_mode == "omit":
            return None
        variant = self._rng.choice(self.garble or GARBLE_VARIANTS)
        return garbled_headers(variant, limit, remaining, reset, window_start - self._window)

    def update(self, doc: object) -> None:
        """Apply a ``POST /sandbox/modes`` body; ValueError (nothing changed) if it is bad."""
        if not isinstance(doc, Mapping):
            raise ValueError("expected a JSON object")
        unknown = sorted(str(k) for k in doc if k not in MODE_FIELDS)
        if unknown:
            raise ValueError(
                f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(MODE_FIELDS)}"
            )
        check_reset_mode(doc.get("reset", self.reset_mode), name=str)  # before any change
        (
            self.shared_consumer,
            self.shared_at,
            self.shared_span,
            self.header_mode,
            self.garble,
        ) = check_modes(
            doc.get("shared_consumer", self.shared_consumer),
            doc.get("shared_at", self.shared_at),
            doc.get("shared_span", self.shared_span),
            doc.get("headers", self.header_mode),
            doc.get("garble", self.garble),
            name=str,
        )
        self.reset_mode = check_reset_mode(doc.get("reset", self.reset_mode), name=str)

    def to_dict(self, now: float) -> dict[str, object]:
        """The document served by the modes and outage admin endpoints."""
        return {
            "started_at": self.started_at,
            "shared_consumer": self.shared_consumer,
            "shared_at": self.shared_at,
            "shared_span": self.shared_span,
            "headers": self.header_mode,
            "garble": list(self.garble or GARBLE_VARIANTS),
            "reset": self.reset_mode,
            "outages": [{"start": s.start, "end": s.end, "mode": s.mode} for s in self.spans],
            "outage_now": self.outage_at(now),
        }


def outage_request(doc: object) -> tuple[float, str]:
    """(seconds, mode) from a ``POST /sandbox/outage`` body; ValueError if it is bad."""
    if not isinstance(doc, Mapping):
        raise ValueError('expected a JSON object like {"seconds": 5, "mode": "5xx"}')
    unknown = sorted(str(k) for k in doc if k not in ("seconds", "mode"))
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)}; allowed: seconds, mode")
    seconds, mode = doc.get("seconds"), doc.get("mode", "5xx")
    if not is_number(seconds) or seconds <= 0:
        raise ValueError(f"seconds must be a number > 0, got {seconds!r}")
    if mode not in OUTAGE_MODES:
        raise ValueError(f"mode must be {' or '.join(OUTAGE_MODES)}, got {mode!r}")
    return float(seconds), str(mode)


def garbled_headers(
    variant: str, limit: str, remaining: int, reset: str, past: int
) -> dict[str, str]:
    """The three headers spoilt one way; ``past`` is an epoch second already gone."""
    if variant == "empty":
        return {_LIMIT: "", _REMAINING: "", _RESET: ""}
    if variant == "negative":
        return {_LIMIT: limit, _REMAINING: "-1", _RESET: reset}
    if variant == "past_reset":
        return {_LIMIT: limit, _REMAINING: str(remaining), _RESET: str(past)}
    return {_LIMIT: "unlimited", _REMAINING: "plenty", _RESET: "soon"}  # "text"


def add_admin_routes(
    app: web.Application,
    modes: Modes,
    faults: FaultBook,
    ledger: Callable[[], Ledger],
    clock: Callable[[], float],
) -> None:
    """The admin API under ``/sandbox/`` (no key needed); ``ledger`` returns the ledger
    brought up to date. A bad body is answered 400 with a message saying what is wrong.

    ``GET /sandbox/ledger``, ``GET /sandbox/health``; ``POST /sandbox/faults`` appends
    rules and ``DELETE`` forgets them (both answer ``{"rules": count}``);
    ``GET``/``POST /sandbox/modes`` read and change the modes (``{"headers": "omit"}``),
    ``POST /sandbox/outage`` starts one now (``{"seconds": 5, "mode": "refuse"}``) and
    ``DELETE /sandbox/outage`` ends the one under way and cancels those to come; these
    four answer the modes document.
    """

    def modes_doc() -> dict[str, object]:
        return modes.to_dict(clock())

    def rule_count() -> dict[str, object]:
        return {"rules": len(faults)}

    def answering(
        answer: Callable[[], dict[str, object]], action: Callable[[], None] | None = None
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            if action is not None:
                action()
            return json_response(200, answer(), None)

        return handle

    def reading(
        change: Callable[[object], None], answer: Callable[[], dict[str, object]]
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            try:
                change(orjson.loads(await request.read()))
            except orjson.JSONDecodeError:
                return json_response(400, {"message": "the body is not valid JSON"}, None)
            except ValueError as exc:
                return json_response(400, {"message": str(exc)}, None)
            return json_response(200, answer(), None)

        return handle

    def start_outage(doc: object) -> None:
        seconds, mode = outage_request(doc)
        modes.add_outage(clock(), seconds, mode)

    def add_rules(doc: object) -> None:
        faults.add(rules_from_document(doc))

    router = app.router
    router.add_get("/sandbox/ledger", answering(lambda: ledger().to_dict()))
    router.add_get("/sandbox/health", answering(lambda: {"ok": True}))
    router.add_post("/sandbox/faults", reading(add_rules, rule_count))
    router.add_delete("/sandbox/faults", answering(rule_count, faults.clear))
    router.add_get("/sandbox/modes", answering(modes_doc))
    router.add_post("/sandbox/modes", reading(modes.update, modes_doc))
    router.add_post("/sandbox/outage", reading(start_outage, modes_doc))
    router.add_delete("/sandbox/outage", answering(modes_doc, lambda: modes.end_outages(clock())))
