"""Row identity across runs, and deterministic send ids.

A row with a send_id is the combination (campaign_id, send_id). A row without one is
(campaign_id, occurrence): the n-th row without a send_id for that campaign in the
manifest. "The same row" in a later run of the same manifest is therefore the row at the
same position among that campaign's send_id-less rows: reordering rows of different
campaigns, or appending new rows, keeps identities; inserting a send_id-less row for a
campaign before its existing ones shifts the later ones (documented in the README).

The occurrence counters and the duplicate check live in ``seen.py``.
"""

from __future__ import annotations

import base64
import hashlib

#: (campaign_id, key) where key is "s:<send_id>" or "n:<occurrence>".
RowKey = tuple[str, str]

#: Braze: "The identifier must be all ASCII characters and at most 64 characters long."
#: The one bound on a send_id: the manifest's rules, derived ids and the sandbox use it.
MAX_SEND_ID = 64
_DIGEST_CHARS = 26  # 130 bits of base32: collisions are not a practical concern


def workspace_label(key: str) -> str:
    """A stable name for the workspace of an API key that does not reveal the key.

    The client (``access.ApiKey.label``), the state store and the sandbox's ledger all
    name workspaces this way, so their figures can be compared.
    """
    return "ws-" + hashlib.sha256(key.encode()).hexdigest()[:10]


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
