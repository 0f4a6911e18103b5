"""Response classification, header parsing, row identities and the retry budget."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from provisioner.client import ReplyKind, classify, parse_rate_limit, parse_retry_after
from provisioner.identity import derive_send_id
from provisioner.retry import RetryBudget


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
        (302, b"", ReplyKind.UNEXPECTED),
    ],
)
def test_classification_follows_braze_facts(status: int, body: bytes, kind: ReplyKind) -> None:
    """Each status/body pair maps to the class braze-facts.md describes."""
    assert classify(status, body)[0] is kind


def test_success_keeps_braze_send_id() -> None:
    """The send_id Braze returned is the one reported."""
    assert classify(201, b'{"message":"success","send_id":"sx"}')[1] == "sx"


def test_rate_limit_headers_any_case() -> None:
    """X-RateLimit-* match case-insensitively (HTTP/2 sends them lower-case)."""
    headers = CIMultiDictProxy(
        CIMultiDict(
            {
                "x-ratelimit-limit": "100",
                "X-RATELIMIT-REMAINING": "7",
                "x-RateLimit-Reset": "1700000000",
            }
        )
    )
    rl = parse_rate_limit(headers)
    assert rl is not None
    assert (rl.limit, rl.remaining, rl.reset) == (100, 7, 1700000000.0)


def test_garbled_headers_are_tolerated() -> None:
    """Garbled values become None rather than an exception."""
    headers = CIMultiDictProxy(CIMultiDict({"X-RateLimit-Limit": "lots", "Retry-After": "soon"}))
    rl = parse_rate_limit(headers)
    assert rl is not None
    assert not rl.complete
    assert parse_retry_after(headers) is None


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
