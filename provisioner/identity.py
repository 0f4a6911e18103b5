"""Row identity across runs, and deterministic send ids.

A row with a send_id is the combination (campaign_id, send_id). A row without one is
(campaign_id, occurrence): the n-th row without a send_id for that campaign in the
manifest. "The same row" in a later run of the same manifest is therefore the row at the
same position among that campaign's send_id-less rows: reordering rows of different
campaigns, or appending new rows, keeps identities; inserting a send_id-less row for a
campaign before its existing ones shifts the later ones (documented in the README).

The occurrence counters take memory per distinct campaign id, not per row.
"""

from __future__ import annotations

import base64
import hashlib

from .models import Row

#: (campaign_id, key) where key is "s:<send_id>" or "n:<occurrence>".
RowKey = tuple[str, str]

MAX_SEND_ID = 64
_DIGEST_CHARS = 26  # 130 bits of base32: collisions are not a practical concern


def derive_send_id(prefix: str, campaign_id: str, occurrence: int) -> str:
    """A stable send_id for the ``occurrence``-th send_id-less row of ``campaign_id``.

    ASCII, at most 64 characters, the same for the same inputs on any machine.
    """
    digest = hashlib.blake2b(
        f"{campaign_id}\x00{occurrence}".encode("utf-8", "surrogatepass"), digest_size=20
    ).digest()
    tail = base64.b32encode(digest).decode("ascii").lower()[:_DIGEST_CHARS]
    send_id = f"{prefix}-{tail}"
    assert len(send_id) <= MAX_SEND_ID
    assert send_id.isascii()
    return send_id


class Identities:
    """Gives each valid row its key and the send_id to request, in manifest order."""

    def __init__(self, derive_prefix: str | None = None) -> None:
        self.derive_prefix = derive_prefix
        self._occurrences: dict[str, int] = {}

    def assign(self, row: Row) -> tuple[RowKey, str | None, bool]:
        """(key, send_id to request, whether the send_id was derived) for the next row."""
        if row.send_id is not None:
            return (row.campaign_id, "s:" + row.send_id), row.send_id, False
        n = self._occurrences.get(row.campaign_id, 0) + 1
        self._occurrences[row.campaign_id] = n
        if self.derive_prefix is None:
            return (row.campaign_id, f"n:{n}"), None, False
        send_id = derive_send_id(self.derive_prefix, row.campaign_id, n)
        return (row.campaign_id, "s:" + send_id), send_id, True
