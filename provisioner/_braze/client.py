"""The Braze client: one aiohttp session, ``POST /sends/id/create``, replies classified.

This is the only module that touches aiohttp on the client side, and ``BrazeClient.create``
is the one place its exceptions are translated: ``ConnectFailed`` when the request
certainly never reached the server, ``InDoubt`` when it may have. Nothing here logs or
formats a request header, so the API key cannot leak through an exception text.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from enum import StrEnum
from types import TracebackType
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
import orjson
from multidict import CIMultiDictProxy

from provisioner._braze.quota import RateLimit
from provisioner._config.access import ApiKey, check_base_url
from provisioner._core.version import package_version
from provisioner.errors import CertificateRejected, ConnectFailed, HostUnreachable, InDoubt

ENDPOINT = "/sends/id/create"
# A success body is ~80 bytes; anything beyond this is not Braze talking.
MAX_BODY = 64 * 1024
USER_AGENT = f"provisioner/{package_version()} (+aiohttp)"


class ReplyKind(StrEnum):
    """What a response means for the row and for the run."""

    CREATED = "created"  # 2xx, "success" and a send_id
    INVALID = "invalid"  # 400 (and other 4xx about the request): the row fails for good
    KEY_REFUSED = "key_refused"  # 401/403/404: stop using this key
    RATE_LIMITED = "rate_limited"  # 429: not the row's fault; wait for the reset
    SERVER_ERROR = "server_error"  # 5xx: transient, retried with backoff
    QUEUED = "queued"  # 202 "queued": Braze took it, no send_id: outcome unknown
    BAD_RESPONSE = "bad_response"  # 2xx that is not a usable success (no JSON, no send_id)
    REDIRECTED = "redirected"  # 3xx: the base URL is not the API; never followed
    UNEXPECTED = "unexpected"  # 1xx or anything else


#: The one 5xx that says the server did nothing: 503 Service Unavailable (overloaded or
#: down for maintenance, RFC 9110 15.6.4). Any other 5xx came after the request reached
#: something that may have acted: a 502/504 is a gateway speaking for a backend that may
#: have written, and a 500 can come after the write. Braze says to retry 5XX; for a row
#: without a send_id a resend could create a second id, so those are in doubt instead.
NOTHING_DONE_5XX = frozenset({503})


def may_have_created(status: int) -> bool:
    """Whether a 5xx answer leaves open that the id was created (all but 503)."""
    return status >= 500 and status not in NOTHING_DONE_5XX


@dataclass(frozen=True, slots=True)
class Reply:
    """One HTTP response, classified."""

    kind: ReplyKind
    status: int
    send_id: str | None
    message: str
    rate_limit: RateLimit | None
    retry_after: float | None
    latency_ms: float
    location: str | None = None


_RATE_LIMIT_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


_MAX_HEADER_INT = 2**53


def _int_header(headers: CIMultiDictProxy[str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        number = int(value)  # int() and float() ignore surrounding whitespace themselves
    except ValueError:
        try:
            number = int(float(value))
        except (ValueError, OverflowError):  # "nan" is a ValueError here, "inf" overflows
            return None
    # Beyond 2**53 a float no longer holds it (and past ~1e308 float() overflows): no
    # server meant such a figure.
    return number if 0 <= number <= _MAX_HEADER_INT else None


def parse_rate_limit(headers: CIMultiDictProxy[str]) -> RateLimit | None:
    """The X-RateLimit-* headers (matched case-insensitively), or None when all are absent."""
    limit = _int_header(headers, "X-RateLimit-Limit")
    remaining = _int_header(headers, "X-RateLimit-Remaining")
    reset = _int_header(headers, "X-RateLimit-Reset")
    if (
        limit is None
        and remaining is None
        and reset is None
        and not any(name in headers for name in _RATE_LIMIT_HEADERS)
    ):
        return None  # absent; present but garbled comes back incomplete (and is logged)
    return RateLimit(limit, remaining, None if reset is None else float(reset))


def parse_retry_after(
    headers: CIMultiDictProxy[str], now: Callable[[], float] = time.time
) -> float | None:
    """X-RateLimit-Retry-After (Braze's newer rate-limit pages: seconds, preferred when
    present), else Retry-After (undocumented for Braze: honoured when present), given as
    seconds or as an HTTP date (RFC 9110 10.2.3: "Fri, 04 Dec 2026 01:00:00 GMT"); a
    date already past is 0. None when absent or garbled."""
    value = _int_header(headers, "X-RateLimit-Retry-After")
    value = _int_header(headers, "Retry-After") if value is None else value
    if value is not None:
        return float(value)
    text = headers.get("Retry-After")
    if text is None or not text.strip() or text.strip()[0].isdigit():
        return None  # absent, or a number _int_header refused (negative, inf, garbled)
    try:
        when = parsedate_to_datetime(text.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # "-0000" (or no zone): UTC, as RFC 5322 says
    return max(0.0, when.timestamp() - now())


def _same(text: str) -> str:
    return text


def _message(body: Any, raw: bytes, redact: Callable[[str], str]) -> str:
    # Redacted before it is cut short: a cut must not leave the first half of a key.
    if isinstance(body, dict):
        msg = body.get("message")
        errors = body.get("errors")
        text = redact(str(msg)) if msg is not None else ""
        if errors:
            listed = redact(orjson.dumps(errors).decode())
            text = f"{text} ({listed[:200]})" if text else redact(str(errors))
        return text[:300]
    return redact(raw[:4096].decode("utf-8", "replace"))[:120]


def classify(
    status: int, raw: bytes, redact: Callable[[str], str] = _same
) -> tuple[ReplyKind, str | None, str]:
    """Map a status and body to (kind, send_id, message) as docs/braze.md describes.

    ``redact`` is applied to every text taken from the body (the message, its errors), so
    that a server echoing the Authorization header cannot put the key in an output."""
    try:
        body: Any = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        body = None
    if 200 <= status < 300 and isinstance(body, dict) and body.get("message") == "success":
        # The usual answer, decided without building a message from the errors it lacks.
        send_id = body.get("send_id")
        if isinstance(send_id, str) and send_id and not body.get("errors"):
            return ReplyKind.CREATED, send_id, "success"
    message = _message(body, raw, redact)
    if 200 <= status < 300:
        if isinstance(body, dict):
            send_id = body.get("send_id")
            if body.get("message") == "success" and isinstance(send_id, str) and send_id:
                return ReplyKind.CREATED, send_id, message
            if status == 202 or body.get("message") == "queued":
                return ReplyKind.QUEUED, None, message or "queued"
        return ReplyKind.BAD_RESPONSE, None, message or "empty body"
    if status == 429:
        return ReplyKind.RATE_LIMITED, None, message
    if status in (401, 403, 404):
        return ReplyKind.KEY_REFUSED, None, message
    if 400 <= status < 500:
        return ReplyKind.INVALID, None, message
    if status >= 500:
        return ReplyKind.SERVER_ERROR, None, message
    if 300 <= status < 400:
        return ReplyKind.REDIRECTED, None, message
    return ReplyKind.UNEXPECTED, None, message


async def read_body(content: aiohttp.StreamReader) -> bytes:
    """The whole body, at most ``MAX_BODY`` bytes. ``read(n)`` alone returns only what has
    arrived so far: a body that comes in pieces (slow network, TLS records) would be cut
    to its first piece and a created row taken for a bad answer."""
    data = await content.read(MAX_BODY)
    if content.at_eof() or not data:
        return data  # the usual case: the whole body came with the headers
    parts = [data]
    size = len(data)
    while size < MAX_BODY:
        chunk = await content.read(MAX_BODY - size)
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """The client's TLS context: certificates and host names always verified, against the
    system's CA store plus ``ca_file`` (a PEM bundle) when given. There is deliberately no
    way to turn verification off: the API key must only ever go to the real server."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file is not None:
        context.load_verify_locations(cafile=ca_file)
    return context


def redirect_target(location: str | None, url: str) -> str:
    """``scheme://host[:port]`` of a redirect's Location (resolved against ``url``), never
    its path or query: those may carry tokens that do not belong in logs."""
    if not location:
        return "no Location header"
    target = urlsplit(urljoin(url, location))
    if not target.hostname:
        return "an unreadable Location"
    host = f"[{target.hostname}]" if ":" in target.hostname else target.hostname
    port = f":{target.port}" if target.port is not None else ""
    return f"{target.scheme}://{host}{port}"


def redirect_message(status: int, location: str | None, url: str) -> str:
    """What to tell a person when ``url`` answered a redirect: the status and the target's
    host (never a key, never the target's path or query), and the fix."""
    return (
        f"{url} answered {status} redirecting to {redirect_target(location, url)}; redirects "
        f"are never followed (the API key would go with them): set base_url to your "
        f"instance's REST endpoint (e.g. https://rest.iad-01.braze.com)"
    )


def _unreachable(exc: aiohttp.ClientConnectorError) -> str | None:
    """What a connect failure says of the host when a wrong base URL is what gives it (DNS,
    refused, TLS or protocol handshake); None for a network slow or down for a while."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError) or isinstance(
        exc.os_error, socket.gaierror
    ):
        return "its name does not resolve (DNS)"
    if isinstance(exc, aiohttp.ClientConnectorSSLError) or isinstance(exc.os_error, ssl.SSLError):
        return "the TLS/protocol handshake failed (is it https on an http port?)"
    if isinstance(exc.os_error, ConnectionRefusedError):
        return "the connection was refused (nothing listens on that port)"
    return None


class BrazeClient:
    """An async context manager around one ``aiohttp.ClientSession`` for the whole run."""

    def __init__(
        self,
        base_url: str,
        api_key: ApiKey,
        *,
        concurrency: int = 16,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        request_timeout: float = 60.0,
        ca_file: str | None = None,
    ) -> None:
        # Checked here too (not only in build_settings): this is where the key leaves, and a
        # Settings built by hand must not send it in clear text to a remote host.
        self.url = check_base_url(base_url) + ENDPOINT
        self.host = urlsplit(self.url).netloc
        self._api_key = api_key
        self._redact = api_key.redactor()
        self._concurrency = concurrency
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=connect_timeout,
            sock_connect=connect_timeout,
            sock_read=read_timeout,
        )
        # read_timeout bounds each socket read, not the whole: a server trickling its
        # answer a byte at a time would hold a request for hours without this total.
        self._request_timeout = request_timeout
        # Requests under way, for abort(): a stop must not wait out a slow server.
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._aborted = False
        self._session: aiohttp.ClientSession | None = None
        # Plain http is for loopback only (check_base_url) and redirects are never followed:
        # such a session never shakes hands, so it needs no context (loading the CA store
        # is ~30 ms of a run's start-up, more on a loaded machine).
        plain = urlsplit(self.url).scheme == "http"
        self._ssl = None if plain else tls_context(ca_file)

    def abort(self) -> None:
        """Cancel the requests under way (a stop's grace is over): each raises ``InDoubt``,
        as its request may have reached Braze. Later requests are not affected."""
        self._aborted = True
        for task in list(self._in_flight):
            task.cancel()

    async def __aenter__(self) -> BrazeClient:
        connector = aiohttp.TCPConnector(
            limit=self._concurrency,
            limit_per_host=0,
            enable_cleanup_closed=True,
            ssl=True if self._ssl is None else self._ssl,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            headers={
                "Authorization": f"Bearer {self._api_key.reveal()}",
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
            },
            # The key must never follow a redirect to another host: no redirects at all.
            raise_for_status=False,
            trust_env=False,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The run's session (it carries the key), for other endpoints (``campaigns.py``)."""
        assert self._session is not None, "use BrazeClient as an async context manager"
        return self._session

    async def create(self, campaign_id: str, send_id: str | None) -> Reply:
        """POST one create request and classify the response.

        Raises ``ConnectFailed`` when the request never left, ``InDoubt`` when it may have
        reached Braze without an answer coming back.
        """
        assert self._session is not None, "use BrazeClient as an async context manager"
        payload: dict[str, str] = {"campaign_id": campaign_id}
        if send_id is not None:
            payload["send_id"] = send_id
        data = orjson.dumps(payload)
        started = time.perf_counter()
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
        deadline: asyncio.Timeout | None = None
        try:
            async with asyncio.timeout(self._request_timeout) as deadline:
                async with self._session.post(self.url, data=data, allow_redirects=False) as resp:
                    raw = await read_body(resp.content)
                    status = resp.status
                    headers = resp.headers
        except asyncio.CancelledError:
            if self._aborted and task is not None and task.uncancel() == 0:
                raise InDoubt(
                    f"the run stopped while waiting for the answer from {self.url}"
                ) from None
            raise
        except aiohttp.ClientConnectorCertificateError as exc:
            # The handshake failed before any HTTP was sent: the key never left.
            err = exc.certificate_error
            why = getattr(err, "verify_message", None) or type(err).__name__
            raise CertificateRejected(
                f"certificate verify failed for host {self.host} ({why}): set [braze] ca_file "
                f"to the CA bundle that signed it, or fix the server's certificate"
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            # DNS, refused, unreachable, TLS handshake: nothing was sent.
            error = str(exc.os_error or exc)
            message = f"cannot connect to {self.url}: {error}"
            why = _unreachable(exc)
            if why is not None:
                raise HostUnreachable(message, host=self.host, error=f"{why}: {error}") from exc
            raise ConnectFailed(message) from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise ConnectFailed(f"timed out connecting to {self.url}") from exc
        except aiohttp.SocketTimeoutError as exc:
            raise InDoubt(f"no response from {self.url} within the read timeout") from exc
        except aiohttp.ServerDisconnectedError as exc:
            raise InDoubt(f"{self.url} closed the connection without answering") from exc
        except aiohttp.ClientPayloadError as exc:
            raise InDoubt(f"the response from {self.url} was cut off") from exc
        except aiohttp.ClientError as exc:
            raise InDoubt(
                f"connection to {self.url} failed mid-request: {type(exc).__name__}"
            ) from exc
        except TimeoutError as exc:
            if deadline is not None and deadline.expired():
                raise InDoubt(
                    f"no complete response from {self.url} within the request timeout "
                    f"({self._request_timeout:g} s)"
                ) from exc
            raise InDoubt(f"no response from {self.url} within the read timeout") from exc
        finally:
            if task is not None:
                self._in_flight.discard(task)
        latency_ms = (time.perf_counter() - started) * 1000.0
        kind, new_send_id, message = classify(status, raw, self._redact)
        if new_send_id is not None and self._redact(new_send_id) != new_send_id:
            # A "send_id" holding the key is no send id: never stored or written.
            kind, new_send_id, message = ReplyKind.BAD_RESPONSE, None, "send_id holds the key"
        return Reply(
            kind=kind,
            status=status,
            send_id=new_send_id,
            message=message,
            rate_limit=parse_rate_limit(headers),
            # Read only where they mean something: the budget waits on Retry-After after a
            # 429 only, and the runner names a redirect's target.
            retry_after=parse_retry_after(headers) if status == 429 else None,
            latency_ms=latency_ms,
            location=(
                self._redact(headers.get("Location", ""))
                if kind is ReplyKind.REDIRECTED and "Location" in headers
                else None
            ),
        )
