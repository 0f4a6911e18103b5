"""Response classification, header parsing, row identities and the retry budget."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from provisioner._braze.client import (
    ReplyKind,
    classify,
    parse_rate_limit,
    parse_retry_after,
    redirect_message,
    redirect_target,
    tls_context,
)
from provisioner._braze.retry import RetryBudget
from provisioner._core.identity import derive_send_id


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (201, b'{"message": "success", "send_id": "abc"}', ReplyKind.CREATED),
        (200, b'{"message": "success", "send_id": "abc"}', ReplyKind.CREATED),
        (201, b'{"message": "success"}', ReplyKind.BAD_RESPONSE),
        (201, b"<html>", ReplyKind.BAD_RESPONSE),
        (202, b'{"message": "queued"}', ReplyKind.QUEUED),
        (400, b'{"message": "invalid campaign"}', ReplyKind.INVALID),
        (413, b"", ReplyKind.INVALID),
        (401, b"{}", ReplyKind.KEY_REFUSED),
        (403, b"{}", ReplyKind.KEY_REFUSED),
        (404, b"{}", ReplyKind.KEY_REFUSED),
        (429, b"{}", ReplyKind.RATE_LIMITED),
        (500, b"oops", ReplyKind.SERVER_ERROR),
        (503, b"", ReplyKind.SERVER_ERROR),
        (301, b"", ReplyKind.REDIRECTED),
        (302, b"", ReplyKind.REDIRECTED),
        (307, b"Moved", ReplyKind.REDIRECTED),
        (308, b"", ReplyKind.REDIRECTED),
        (101, b"", ReplyKind.UNEXPECTED),
    ],
)
def test_classification_follows_braze_facts(status: int, body: bytes, kind: ReplyKind) -> None:
    """Each status/body pair maps to the class docs/braze.md describes."""
    assert classify(status, body)[0] is kind


def test_success_keeps_braze_send_id() -> None:
    """The send_id Braze returned is the one reported."""
    assert classify(201, b'{"message":"success","send_id":"sx"}')[1] == "sx"


def _headers(values: dict[str, str]) -> CIMultiDictProxy[str]:
    """Response headers as aiohttp hands them to the client."""
    return CIMultiDictProxy(CIMultiDict(values))


def test_rate_limit_headers_any_case() -> None:
    """X-RateLimit-* match case-insensitively (HTTP/2 sends them lower-case)."""
    headers = _headers(
        {
            "x-ratelimit-limit": "100",
            "X-RATELIMIT-REMAINING": "7",
            "x-RateLimit-Reset": "1700000000",
        }
    )
    rl = parse_rate_limit(headers)
    assert rl is not None
    assert (rl.limit, rl.remaining, rl.reset) == (100, 7, 1700000000.0)


def test_garbled_headers_are_tolerated() -> None:
    """Garbled values become None rather than an exception."""
    headers = _headers({"X-RateLimit-Limit": "lots", "Retry-After": "soon"})
    rl = parse_rate_limit(headers)
    assert rl is not None
    assert not rl.complete
    assert parse_retry_after(headers) is None


@pytest.mark.parametrize("value", ["inf", "-inf", "1e999", "nan", "Infinity"])
def test_non_finite_header_numbers_are_tolerated(value: str) -> None:
    """A rate-limit header reading inf or nan is garbled (None), not an OverflowError that
    would escape the client's exception translation."""
    headers = _headers(
        {
            "X-RateLimit-Limit": "100",
            "X-RateLimit-Remaining": value,
            "X-RateLimit-Reset": value,
            "Retry-After": value,
        }
    )
    rl = parse_rate_limit(headers)
    assert rl is not None
    assert (rl.limit, rl.remaining, rl.reset) == (100, None, None)
    assert parse_retry_after(headers) is None


def test_header_numbers_may_carry_whitespace() -> None:
    """Values with spaces or tabs around them still count (a proxy may add them)."""
    headers = _headers(
        {
            "X-RateLimit-Limit": " 100",
            "X-RateLimit-Remaining": "7\t",
            "X-RateLimit-Reset": " 1700000000.0 ",
        }
    )
    rl = parse_rate_limit(headers)
    assert rl is not None
    assert (rl.limit, rl.remaining, rl.reset) == (100, 7, 1700000000.0)


def test_derived_send_ids_are_stable_ascii_and_short() -> None:
    """Derived ids are deterministic, ASCII, at most 64 characters and distinct per row."""
    a = derive_send_id("mig2026", "campaign-é-1", 1)
    assert a == derive_send_id("mig2026", "campaign-é-1", 1)
    assert a.isascii()
    assert len(a) <= 64
    assert a != derive_send_id("mig2026", "campaign-é-1", 2)
    assert len(derive_send_id("p" * 24, "c" * 256, 10**9)) <= 64


def test_retry_budget_bounds_retries() -> None:
    """Retries are capped at floor + ratio x requests."""
    budget = RetryBudget(ratio=0.1, floor=2)
    for _ in range(10):
        budget.note_request()
    granted = sum(budget.take() for _ in range(10))
    assert granted == 3
    assert budget.denied == 7


async def test_a_row_the_budget_denied_says_so() -> None:
    """When the retry budget (not the row's attempts) stops the retries, the exception is
    marked and the row's message says the budget was spent, not just "1 attempts"."""
    from provisioner._braze.client import Reply
    from provisioner._braze.retry import RetryPolicy, Transient
    from provisioner._core.models import Row
    from provisioner._pipeline.outcomes import final_outcome

    reply = Reply(ReplyKind.SERVER_ERROR, 503, None, "down", None, None, 1.0)
    calls = 0

    async def no_sleep(_: float) -> None:
        return None

    async def retry_forever(policy: RetryPolicy, budget: RetryBudget) -> None:
        nonlocal calls
        async for attempt in policy.retrying(budget, sleep=no_sleep):
            with attempt:
                calls += 1
                raise Transient(reply=reply)

    with pytest.raises(Transient) as info:
        await retry_forever(RetryPolicy(attempts=5), RetryBudget(ratio=0.0, floor=0))
    assert calls == 1
    assert info.value.budget_spent
    row = Row(line=2, campaign_id="c1", send_id="s1", columns=())
    outcome = final_outcome(row, "s1", 1, None, info.value)
    assert outcome.error == "server_error"
    assert "retry budget is spent" in (outcome.message or "")

    with pytest.raises(Transient) as info:
        await retry_forever(RetryPolicy(attempts=2), RetryBudget(ratio=1.0, floor=100))
    assert not info.value.budget_spent  # the attempts cap stopped it: nothing to add


@pytest.mark.parametrize(
    ("location", "target"),
    [
        ("https://other.example/sends/id/create?token=t0k3n", "https://other.example"),
        ("http://127.0.0.1:8081/x", "http://127.0.0.1:8081"),
        ("/moved/sends/id/create", "https://rest.iad-01.braze.com"),
        ("https://[::1]:9/x", "https://[::1]:9"),
        (None, "no Location header"),
        ("", "no Location header"),
        ("http://", "an unreadable Location"),
    ],
)
def test_redirect_target_names_only_the_host(location: str | None, target: str) -> None:
    """A redirect is described by scheme, host and port only (relative ones resolved):
    never its path or query, which may hold tokens."""
    url = "https://rest.iad-01.braze.com/sends/id/create"
    assert redirect_target(location, url) == target


def test_redirect_message_says_what_to_fix() -> None:
    """The message names the status, the host redirected to, and the fix (base_url)."""
    msg = redirect_message(301, "https://new.example/a?key=secret", "https://old.example/x")
    assert "301" in msg
    assert "https://new.example" in msg
    assert "base_url" in msg
    assert "secret" not in msg


@pytest.mark.parametrize("ca_file", [None, "ca"])
def test_tls_context_always_verifies(ca_file: str | None, tmp_path: Path) -> None:
    """The client's TLS context verifies certificates and host names, with or without a
    custom CA bundle: there is no way to get a non-verifying one."""
    path = None
    if ca_file is not None:
        import trustme

        ca = trustme.CA()
        path = str(tmp_path / "ca.pem")
        ca.cert_pem.write_to_path(path)
    context = tls_context(path)
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    if path is not None:
        # The system store is kept: the bundle is trusted in addition, not instead.
        system = tls_context().cert_store_stats()["x509_ca"]
        assert context.cert_store_stats()["x509_ca"] == system + 1


async def test_read_body_waits_for_every_piece() -> None:
    """A body that arrives in pieces is read whole (read(n) alone returns the first piece),
    and a body over MAX_BODY is cut there."""
    import asyncio

    from aiohttp import StreamReader
    from aiohttp.base_protocol import BaseProtocol

    from provisioner._braze.client import MAX_BODY, read_body

    loop = asyncio.get_running_loop()
    protocol = BaseProtocol(loop)
    protocol.connection_made(asyncio.Transport())  # "connected": read() waits for data
    content = StreamReader(protocol, 2**16, loop=loop)
    content.feed_data(b'{"message": "suc')

    async def rest() -> None:
        await asyncio.sleep(0.01)
        content.feed_data(b'cess", "send_id": "s1"}')
        content.feed_eof()

    feeder = asyncio.ensure_future(rest())
    assert await read_body(content) == b'{"message": "success", "send_id": "s1"}'
    await feeder

    big = StreamReader(protocol, 2**20, loop=loop)
    big.feed_data(b"x" * (MAX_BODY + 10))
    big.feed_eof()
    assert len(await read_body(big)) == MAX_BODY


@pytest.mark.parametrize(
    "url", ["http://rest.iad-01.braze.com", "ftp://x", "https://u:p@h.example"]
)
def test_client_refuses_an_unsafe_base_url(url: str) -> None:
    """The client itself refuses plain http to a remote host (and other unsafe URLs), even
    when its settings were not built by build_settings."""
    from provisioner._braze.client import BrazeClient
    from provisioner._config.access import ApiKey
    from provisioner.errors import ConfigError

    with pytest.raises(ConfigError):
        BrazeClient(url, ApiKey("k"))


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"X-RateLimit-Retry-After": "7"}, 7.0),
        ({"x-ratelimit-retry-after": "7"}, 7.0),
        ({"Retry-After": "3"}, 3.0),
        ({"X-RateLimit-Retry-After": "7", "Retry-After": "3"}, 7.0),
        ({"X-RateLimit-Retry-After": "soon", "Retry-After": "3"}, 3.0),
        ({}, None),
    ],
)
def test_x_ratelimit_retry_after_is_honoured_like_retry_after(
    given: dict[str, str], expected: float | None
) -> None:
    """X-RateLimit-Retry-After counts as Retry-After (any case), and wins when both come."""
    assert parse_retry_after(_headers(given)) == expected


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("Fri, 04 Dec 2026 01:00:30 GMT", 30.0),
        ("Fri, 04 Dec 2026 00:59:00 GMT", 0.0),  # already past: no wait
        ("Fri, 04 Dec 2026 01:02:00 -0000", 120.0),
        ("Friday, 32 Foo 2026", None),  # garbled
        ("-5", None),
    ],
)
def test_retry_after_may_be_an_http_date(value: str, seconds: float | None) -> None:
    """Retry-After as an HTTP date is the seconds until it (0 when past); garbled: None."""
    now = 1796346000.0  # 2026-12-04T01:00:00Z
    assert parse_retry_after(_headers({"Retry-After": value}), now=lambda: now) == seconds
