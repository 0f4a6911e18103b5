"""ApiKey.redactor: the key, in every form a server could echo it, becomes ``<redacted>``
in text taken from a response; everything else in that text is left as it was."""

from __future__ import annotations

import base64
from urllib.parse import quote, quote_plus

import pytest

from provisioner._config.access import REDACTED, ApiKey

# Characters that base64, URL-encoding and quote_plus all change.
KEY = "SECRET-KEY+0123456789/abc def="


def _b64_forms(text: str) -> list[str]:
    raw = text.encode()
    return [base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()]


FORMS = {
    "raw": KEY,
    "bearer": f"Bearer {KEY}",
    "url": quote(KEY, safe=""),
    "url_plus": quote_plus(KEY),
    "url_bearer": quote(f"Bearer {KEY}", safe=""),
    "hex": KEY.encode().hex(),
    "HEX": KEY.encode().hex().upper(),
    # Each prefix length puts the key at another of base64's three alignments.
    **{f"b64_{n}": _b64_forms("x" * n + KEY)[0] for n in range(3)},
    **{f"b64url_{n}": _b64_forms("x" * n + KEY)[1] for n in range(3)},
    "b64_bearer": _b64_forms(f"Bearer {KEY}")[0],
}


@pytest.mark.parametrize("name", sorted(FORMS))
def test_each_form_of_the_key_is_redacted_and_the_rest_is_untouched(name: str) -> None:
    """Raw, Bearer, URL-encoded, hex, base64 (each alignment, standard and URL-safe)."""
    form = FORMS[name]
    redact = ApiKey(KEY).redactor()
    out = redact(f"Invalid credentials [{form}] for campaign c-1")
    assert out.startswith("Invalid credentials [")
    assert out.endswith("] for campaign c-1")
    assert REDACTED in out
    # What is left of the form (a few base64 characters at an edge) cannot rebuild the key.
    assert not any(f in out for f in (KEY, quote(KEY, safe=""), KEY.encode().hex()))
    middle = out.removeprefix("Invalid credentials [").removesuffix("] for campaign c-1")
    # base64 keeps up to 4 characters at each edge (they mix in bytes around the key), and
    # the encoded "Bearer " prefix stays too.
    allowed = {"bearer": len("Bearer "), "url_bearer": len("Bearer%20")}.get(name, 8)
    allowed = len(base64.b64encode(b"Bearer ")) + 4 if name == "b64_bearer" else allowed
    assert len(middle.replace(REDACTED, "")) <= allowed, middle


def test_every_occurrence_is_redacted() -> None:
    """A message quoting the key several times, in several forms, keeps none of them."""
    redact = ApiKey(KEY).redactor()
    text = " | ".join(FORMS.values())
    out = redact(text)
    assert out.count(REDACTED) >= len(FORMS)
    assert [f for f in (KEY, quote(KEY, safe=""), KEY.encode().hex()) if f in out] == []


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Internal Server Error",
        "Invalid campaign_id: no campaign found",
        "SECRET-KEY+012 (a prefix of the key is not the key)",
        '{"message": "Rate limit exceeded", "errors": ["campaign_id"]}',
        "caf\u00e9 \U0001f600 \x00 binary-ish",
    ],
)
def test_text_without_the_key_is_returned_unchanged(text: str) -> None:
    """Ordinary messages, and a mere prefix of the key, pass through as they are."""
    assert ApiKey(KEY).redactor()(text) == text


def test_a_short_key_does_not_redact_ordinary_words() -> None:
    """A key too short to be real redacts none of its forms shorter than six characters,
    so that it cannot turn words of a message into markers."""
    redact = ApiKey("abc").redactor()
    assert redact("abc abcabc is fine") == "abc abcabc is fine"
    assert redact("hex 616263 is six long") == f"hex {REDACTED} is six long"
