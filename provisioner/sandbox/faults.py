"""How the sandbox reads a create request and spoils its answer: the body's rules and
fault rules (what a rule is, how rules are read, which one applies). The ledger that
records what happened is ``sandbox/ledger.py``.

Kept apart from ``server.py`` so that the server module stays about serving; the public
names (``FaultRule``, ``load_faults``) are re-exported by ``provisioner.sandbox``.
"""

from __future__ import annotations

import asyncio
import base64
import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import quote

import orjson
from aiohttp import web

from provisioner._core.identity import MAX_SEND_ID
from provisioner.errors import ConfigError

#: Actions that answer without creating anything.
NON_CREATING_ACTIONS = frozenset({"status", "rate_limit", "drop_before", "redirect", "echo_auth"})
#: Actions that create (ledger + quota) and then spoil the answer.
CREATING_ACTIONS = frozenset(
    {
        "queued",
        "drop_after",
        "delay",
        "not_json",
        "no_send_id",
        "slow_body",
        "error_after",
        "other_send_id",
        "trickle_body",
        "trickle_headers",
    }
)
ACTIONS = NON_CREATING_ACTIONS | CREATING_ACTIONS
#: Actions that answer their rule's ``status``.
_STATUS_ACTIONS = frozenset({"status", "error_after", "echo_auth"})
#: Actions that are meaningless without a positive ``delay_ms``.
_DELAYED_ACTIONS = frozenset({"delay", "slow_body", "trickle_body", "trickle_headers"})
#: The codes a ``redirect`` rule may answer, and its default (307 keeps the method and body,
#: so a client that followed it would POST the key and body to ``location``).
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
DEFAULT_REDIRECT_CODE = 307
#: Where a ``redirect`` rule points without a ``location``: another host, on a reserved
#: domain that never resolves (RFC 2606), so a client that followed it would get nowhere.
DEFAULT_REDIRECT_LOCATION = "https://moved.example.invalid/sends/id/create"
#: How each action shows in the ledger's ``by_status`` (``status`` and ``redirect`` use their
#: own code).
_OUTCOMES = {
    "rate_limit": "429",
    "drop_before": "dropped",
    "drop_after": "dropped",
    "queued": "202",
    "delay": "201",
    "not_json": "201",
    "no_send_id": "201",
    "slow_body": "201",
    "other_send_id": "201",
    "trickle_body": "201",
    "trickle_headers": "201",
}
#: Braze-like messages for error answers, shared with the server module.
ERROR_MESSAGES = {
    400: "Invalid campaign_id: no campaign found",
    401: "Invalid API key: the key was not accepted",
    403: "Forbidden: the API key lacks the sends.id.create permission",
    404: "Invalid API key: not found",
    429: "Rate limit exceeded",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_JSON = "application/json"
_SLOW_BODY_CHUNKS = 4


@dataclass(frozen=True, slots=True)
class FaultRule:
    """One deterministic fault: which requests it hits, how often, and what it does.

    ``campaign_id`` None matches every campaign; ``times`` None applies forever,
    otherwise the rule applies to that many requests and then stays silent.
    ``probability`` is drawn from the sandbox's seeded RNG; a request the draw spares
    goes on to the next rule without using up ``times``.
    """

    action: str
    campaign_id: str | None = None
    times: int | None = None
    probability: float = 1.0
    delay_ms: float = 0.0
    status: int = 500
    location: str | None = None
    #: A ``Retry-After`` header sent as it is (seconds, an HTTP date, or nonsense) on a
    #: ``rate_limit`` or ``status`` answer.
    retry_after: str | None = None

    def __post_init__(self) -> None:
        # Checked here, not only in the JSON reader, so that a rule built in Python
        # (tests, benchmarks) fails at construction rather than mid-request.
        if self.action not in ACTIONS:
            raise ValueError(
                f"unknown action {self.action!r}; expected one of {', '.join(sorted(ACTIONS))}"
            )
        if self.campaign_id is not None and (
            not isinstance(self.campaign_id, str) or not self.campaign_id
        ):
            raise ValueError("campaign_id must be a non-empty string or null (any campaign)")
        if self.times is not None and (
            isinstance(self.times, bool) or not isinstance(self.times, int) or self.times < 1
        ):
            raise ValueError(f"times must be a positive integer or null, got {self.times!r}")
        if not _is_number(self.probability) or not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability must be between 0 and 1, got {self.probability!r}")
        if not _is_number(self.delay_ms) or self.delay_ms < 0:
            raise ValueError(f"delay_ms must be a number >= 0, got {self.delay_ms!r}")
        if self.action in _DELAYED_ACTIONS and self.delay_ms <= 0:
            raise ValueError(f"action {self.action!r} needs a delay_ms > 0")
        if isinstance(self.status, bool) or not isinstance(self.status, int):
            raise ValueError(f"status must be an integer, got {self.status!r}")
        if self.action in _STATUS_ACTIONS and not 400 <= self.status <= 599:
            raise ValueError(f"status must be an HTTP error code (400-599), got {self.status}")
        if self.action == "redirect":
            if self.status == 500:
                # 500 is the field's default for `status` rules, never a redirect: a rule
                # that leaves it out gets the redirect default instead.
                object.__setattr__(self, "status", DEFAULT_REDIRECT_CODE)
            if self.status not in REDIRECT_CODES:
                codes = ", ".join(str(c) for c in sorted(REDIRECT_CODES))
                raise ValueError(f"a redirect status must be one of {codes}, got {self.status}")
        if self.location is not None and (
            not isinstance(self.location, str)
            or not self.location
            or any(not 0x21 <= ord(c) <= 0x7E for c in self.location)
        ):
            # Printable ASCII without spaces: it goes into a header as it is.
            raise ValueError(
                f"location must be a URL of printable ASCII without spaces, got {self.location!r}"
            )

        if self.retry_after is not None and (
            not isinstance(self.retry_after, str)
            or not self.retry_after
            or any(not 0x20 <= ord(c) <= 0x7E for c in self.retry_after)
        ):
            raise ValueError(
                f"retry_after must be a non-empty header value of printable ASCII, "
                f"got {self.retry_after!r}"
            )

    @property
    def creates(self) -> bool:
        """Whether a request hit by this rule still creates (ledger entry, quota)."""
        return self.action in CREATING_ACTIONS

    @property
    def outcome(self) -> str:
        """The ledger's ``by_status`` key for a request this rule answers."""
        if self.action in _STATUS_ACTIONS or self.action == "redirect":
            return str(self.status)
        return _OUTCOMES[self.action]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


_RULE_FIELDS = frozenset(f.name for f in fields(FaultRule))


def rule_from_mapping(data: object) -> FaultRule:
    """Build a rule from its JSON form; raises ValueError saying what is wrong."""
    if not isinstance(data, Mapping):
        raise ValueError(f"a rule must be a JSON object, got {json_type(data)}")
    unknown = sorted(str(k) for k in data if k not in _RULE_FIELDS)
    if unknown:
        raise ValueError(
            f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_RULE_FIELDS))}"
        )
    if "action" not in data:
        raise ValueError("the field 'action' is required")
    try:
        return FaultRule(**{str(k): v for k, v in data.items()})
    except TypeError as exc:  # a wrongly typed value that __post_init__ compared
        raise ValueError(str(exc)) from None


def rules_from_document(doc: object) -> tuple[FaultRule, ...]:
    """Read ``{"rules": [...]}``; raises ValueError naming the bad rule (1-based)."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("rules"), list):
        raise ValueError('expected a JSON object with a "rules" list')
    rules: list[FaultRule] = []
    for index, item in enumerate(doc["rules"], start=1):
        try:
            rules.append(rule_from_mapping(item))
        except ValueError as exc:
            action = item.get("action") if isinstance(item, Mapping) else None
            what = f" (action {action!r})" if isinstance(action, str) else ""
            raise ValueError(f"rule #{index}{what}: {exc}") from None
    return tuple(rules)


def load_faults(path: str) -> tuple[FaultRule, ...]:
    """Read fault rules from a JSON file shaped ``{"rules": [{...}, ...]}``.

    Raises ``ConfigError`` naming the file and, for a bad rule, its position and action.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read fault file {path}: {exc.strerror or exc}") from None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"fault file {path} is not valid JSON: {exc}") from None
    try:
        return rules_from_document(doc)
    except ValueError as exc:
        raise ConfigError(f"fault file {path}: {exc}") from None


def json_type(value: object) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


class Invalid:
    """Why a create body was refused: one message per bad field, each starting with it."""

    __slots__ = ("errors",)

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors


def parse_create_body(raw: bytes) -> tuple[str, str | None] | Invalid:
    """(campaign_id, send_id or None) from a request body, or the errors naming fields."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return Invalid(["body: is not valid JSON"])
    if not isinstance(doc, dict):
        return Invalid([f"body: expected a JSON object, got {json_type(doc)}"])
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
    elif len(send_id) > MAX_SEND_ID:
        errors.append(f"send_id: must be at most {MAX_SEND_ID} characters, got {len(send_id)}")
    if errors or not isinstance(campaign_id, str):
        return Invalid(errors)
    return campaign_id, send_id if isinstance(send_id, str) else None


class _Slot:
    """A rule and how many more times it may apply (None = unlimited)."""

    __slots__ = ("left", "rule")

    def __init__(self, rule: FaultRule) -> None:
        self.rule = rule
        self.left = rule.times


class FaultBook:
    """The live, ordered rules of one sandbox with their remaining uses."""

    __slots__ = ("_rng", "_slots")

    def __init__(self, rules: Iterable[FaultRule], rng: random.Random) -> None:
        self._rng = rng
        self._slots = [_Slot(rule) for rule in rules]

    def __len__(self) -> int:
        return len(self._slots)

    def add(self, rules: Iterable[FaultRule]) -> None:
        """Append rules after the existing ones (earlier rules keep precedence)."""
        self._slots.extend(_Slot(rule) for rule in rules)

    def clear(self) -> None:
        """Forget every rule."""
        self._slots.clear()

    def pick(self, campaign_id: str) -> FaultRule | None:
        """The rule that applies to this request, using up one of its ``times``."""
        for slot in self._slots:
            rule = slot.rule
            if slot.left == 0:
                continue
            if rule.campaign_id is not None and rule.campaign_id != campaign_id:
                continue
            if rule.probability < 1.0 and self._rng.random() >= rule.probability:
                continue
            if slot.left is not None:
                slot.left -= 1
            return rule
        return None


def json_response(
    status: int, payload: dict[str, object], headers: dict[str, str] | None
) -> web.Response:
    """A JSON answer serialised with orjson."""
    return web.Response(
        body=orjson.dumps(payload), status=status, headers=headers, content_type=_JSON
    )


async def answer_fault(
    rule: FaultRule, request: web.Request, headers: dict[str, str] | None, send_id: str | None
) -> web.StreamResponse:
    """The answer to a request hit by ``rule``, once the server has created (or not).

    ``headers`` are the rate-limit headers to send (None: none), which the server
    builds, Remaining 0 included for a 429; ``send_id`` is the id created, None for the
    actions that create nothing.
    """
    action = rule.action
    if action in ("drop_before", "drop_after"):
        if request.transport is not None:
            request.transport.close()
        # Never written: aiohttp finds the transport closed, takes it for a client
        # disconnect and ignores it quietly.
        return web.Response(status=204)
    if action == "echo_auth":
        # A careless server quoting the request's credentials back, raw, base64-encoded
        # and URL-encoded: the client must not write any of them anywhere.
        auth = request.headers.get("Authorization", "")
        b64 = base64.b64encode(auth.encode()).decode()
        message = f"Invalid credentials {auth!r} (base64 {b64}, url {quote(auth, safe='')})"
        return json_response(rule.status, {"message": message, "errors": [auth]}, headers)
    if action == "other_send_id":
        other = f"{send_id}-other" if send_id is not None else "sbx_other"
        return json_response(201, {"message": "success", "send_id": other}, headers)
    if action in ("status", "rate_limit", "error_after"):
        status = 429 if action == "rate_limit" else rule.status
        message = ERROR_MESSAGES.get(status, f"Sandbox fault: HTTP {status}")
        if rule.retry_after is not None:
            headers = {**(headers or {}), "Retry-After": rule.retry_after}
        return json_response(status, {"message": message}, headers)
    if action == "redirect":
        # A front door or proxy answers, not the service: no rate-limit headers.
        location = rule.location or DEFAULT_REDIRECT_LOCATION
        return web.Response(
            text=f"Moved to {location}\n",
            status=rule.status,
            headers={"Location": location},
            content_type="text/plain",
        )
    if action == "queued":
        return json_response(202, {"message": "queued"}, headers)
    if action == "no_send_id":
        return json_response(201, {"message": "success"}, headers)
    if action == "not_json":
        return web.Response(
            text="<html>oops</html>", status=201, headers=headers, content_type="text/html"
        )
    delay = rule.delay_ms / 1000.0
    if action in ("trickle_body", "trickle_headers"):
        return await _trickle(rule, request, headers, send_id, delay)
    if action == "delay":
        await asyncio.sleep(delay)
        return json_response(201, {"message": "success", "send_id": send_id}, headers)
    # slow_body: headers at once, then the body in a few chunks, each after delay_ms.
    body = orjson.dumps({"message": "success", "send_id": send_id})
    response = web.StreamResponse(status=201, headers=headers)
    response.content_type = _JSON
    response.content_length = len(body)
    await response.prepare(request)
    step = -(-len(body) // _SLOW_BODY_CHUNKS)
    try:
        for start in range(0, len(body), step):
            await asyncio.sleep(delay)
            await response.write(body[start : start + step])
        await response.write_eof()
    except ConnectionError:
        pass  # the client gave up (read timeout): that is what this fault is for
    return response


async def _trickle(
    rule: FaultRule,
    request: web.Request,
    headers: dict[str, str] | None,
    send_id: str | None,
    delay: float,
) -> web.StreamResponse:
    """The normal 201 written straight to the socket one byte every ``delay`` seconds:
    the headers too (``trickle_headers``), or only the body (``trickle_body``). Each read
    of the client gets a byte well within any read timeout; only a total bounds it."""
    body = orjson.dumps({"message": "success", "send_id": send_id})
    head = "HTTP/1.1 201 Created\r\n" + "".join(
        f"{name}: {value}\r\n"
        for name, value in {
            **(headers or {}),
            "Content-Type": _JSON,
            "Content-Length": str(len(body)),
            "Connection": "close",
        }.items()
    )
    raw_head = (head + "\r\n").encode()
    transport = request.transport
    if transport is None:
        return web.Response(status=204)
    trickled = raw_head + body if rule.action == "trickle_headers" else body
    try:
        if rule.action == "trickle_body":
            transport.write(raw_head)
        for index in range(len(trickled)):
            await asyncio.sleep(delay)
            if transport.is_closing():
                break  # the client gave up: that is what this fault is for
            transport.write(trickled[index : index + 1])
    finally:
        transport.close()
    # Never written: the transport is closed, which aiohttp takes quietly.
    return web.Response(status=204)
