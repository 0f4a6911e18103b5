"""A scripted fake of the Braze sender, for unit tests of the run without sockets.

Each call to ``create`` takes the next step of the script (or of the campaign's own
script), records the request, and answers the step's ``Reply`` or raises its transport
error. The step builders below cover what Braze can answer: created, a repeat of a
combination (duplicate), 4xx, 5xx, 429 with its reset or Retry-After, a refused key, a
redirect, a connection that failed before sending, and a lost answer (in doubt).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from provisioner._braze.client import ENDPOINT, Reply, ReplyKind
from provisioner._braze.quota import RateLimit
from provisioner.errors import ConnectFailed, InDoubt

#: One scripted answer: given the request (campaign_id, send_id), a Reply, or it raises.
Step = Callable[[str, str | None], Reply]

FAKE_URL = "https://fake.braze.invalid" + ENDPOINT


@dataclass(frozen=True, slots=True)
class Request:
    """One request the fake sender saw."""

    campaign_id: str
    send_id: str | None


def _reply(
    kind: ReplyKind,
    status: int,
    message: str,
    *,
    send_id: str | None = None,
    rate_limit: RateLimit | None = None,
    retry_after: float | None = None,
    location: str | None = None,
) -> Reply:
    return Reply(
        kind=kind,
        status=status,
        send_id=send_id,
        message=message,
        rate_limit=rate_limit,
        retry_after=retry_after,
        latency_ms=1.0,
        location=location,
    )


def created(send_id: str | None = None, *, rate_limit: RateLimit | None = None) -> Step:
    """201 success: the requested send_id echoed, else ``send_id``, else a made-up one."""

    def step(campaign_id: str, requested: str | None) -> Reply:
        sid = requested or send_id or f"fake-{campaign_id}"
        return _reply(ReplyKind.CREATED, 201, "success", send_id=sid, rate_limit=rate_limit)

    return step


def duplicate(*, rate_limit: RateLimit | None = None) -> Step:
    """A repeat of a (campaign_id, send_id) Braze already has: the same success answer
    (Braze documents no error for it), the requested send_id echoed."""
    return created(rate_limit=rate_limit)


def invalid(status: int = 400, message: str = "Invalid campaign_id") -> Step:
    """A 4xx about the request: the row fails for good."""
    return lambda _c, _s: _reply(ReplyKind.INVALID, status, message)


def key_refused(status: int = 401, message: str = "Invalid API key") -> Step:
    """401/403/404: the workspace's key is refused; its lane stops."""
    return lambda _c, _s: _reply(ReplyKind.KEY_REFUSED, status, message)


def server_error(status: int = 503, message: str = "Service Unavailable") -> Step:
    """A 5xx: transient, retried with backoff, counted by the breaker."""
    return lambda _c, _s: _reply(ReplyKind.SERVER_ERROR, status, message)


def queued() -> Step:
    """202 queued: Braze took the request but gave no send_id."""
    return lambda _c, _s: _reply(ReplyKind.QUEUED, 202, "queued")


def redirected(location: str = "https://login.example.invalid/") -> Step:
    """A 3xx: the base URL is not the API."""
    return lambda _c, _s: _reply(ReplyKind.REDIRECTED, 302, "", location=location)


def rate_limited(
    *,
    reset: float | None = None,
    limit: int = 100,
    retry_after: float | None = None,
) -> Step:
    """429. With ``reset`` (epoch seconds) the X-RateLimit-* headers say the window
    (Remaining 0); with ``retry_after`` the Retry-After header is set; with neither the
    answer says nothing of when to come back."""
    rl = None if reset is None else RateLimit(limit, 0, reset)
    return lambda _c, _s: _reply(
        ReplyKind.RATE_LIMITED, 429, "Rate limit exceeded", rate_limit=rl, retry_after=retry_after
    )


def connect_failed(message: str = "connection refused") -> Step:
    """The request never reached the server (``ConnectFailed``): safe to resend."""

    def step(_c: str, _s: str | None) -> Reply:
        raise ConnectFailed(f"cannot connect to {FAKE_URL}: {message}")

    return step


def in_doubt(message: str = "closed the connection without answering") -> Step:
    """The request may have reached Braze and the answer was lost (``InDoubt``)."""

    def step(_c: str, _s: str | None) -> Reply:
        raise InDoubt(f"{FAKE_URL} {message}")

    return step


class ScriptedSender:
    """Answers each ``create`` from a script; implements the run's ``Sender`` seam.

    ``script`` is used in call order; ``by_campaign`` gives a campaign its own queue
    (taken first, for tests with several workers where call order is not fixed). When
    both are exhausted, ``default`` answers (created, unless told otherwise).

    With ``limit`` and ``reset_at`` the replies that carry no rate limit of their own get
    complete X-RateLimit-* figures, Remaining going down by one per creation, as the
    server's fixed window does.
    """

    def __init__(
        self,
        script: Iterable[Step] = (),
        *,
        by_campaign: Mapping[str, Iterable[Step]] | None = None,
        default: Step | None = None,
        limit: int | None = None,
        reset_at: float | None = None,
        url: str = FAKE_URL,
    ) -> None:
        self.url = url
        self._script: deque[Step] = deque(script)
        self._by_campaign = {c: deque(steps) for c, steps in (by_campaign or {}).items()}
        self._default = default or created()
        self._limit = limit
        self._reset_at = reset_at
        self.created = 0
        #: Every request seen, in order (one per call, whatever the answer).
        self.requests: list[Request] = []

    @property
    def calls(self) -> int:
        """How many requests were sent."""
        return len(self.requests)

    @property
    def pending(self) -> int:
        """Scripted steps not used yet (0 once the script is played out)."""
        return len(self._script) + sum(len(q) for q in self._by_campaign.values())

    def _next(self, campaign_id: str) -> Step:
        own = self._by_campaign.get(campaign_id)
        if own:
            return own.popleft()
        if self._script:
            return self._script.popleft()
        return self._default

    async def create(self, campaign_id: str, send_id: str | None) -> Reply:
        """Record the request, then answer (or raise) what the script says."""
        self.requests.append(Request(campaign_id, send_id))
        reply = self._next(campaign_id)(campaign_id, send_id)
        if reply.kind is ReplyKind.CREATED:
            self.created += 1
        if reply.rate_limit is None and self._limit is not None and self._reset_at is not None:
            remaining = max(0, self._limit - self.created)
            rl = RateLimit(self._limit, remaining, self._reset_at)
            reply = _reply(
                reply.kind, reply.status, reply.message, send_id=reply.send_id, rate_limit=rl,
                retry_after=reply.retry_after, location=reply.location,
            )  # fmt: skip
        return reply
