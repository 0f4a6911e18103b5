"""Header names: a near miss of a known column (``Send ID`` for ``send_id``) is refused.

A header that reads as ``campaign_id``, ``send_id`` or ``workspace`` once case, spaces,
dashes and underscores are set aside, but is not exactly it, would otherwise be carried
through as a plain column while the row goes out without it (every row a Braze-generated
id, or the default workspace). ``reader.py`` calls these when it reads a header.
"""

from __future__ import annotations

from collections.abc import Iterable

from provisioner._core.models import CAMPAIGN_ID
from provisioner._manifest.records import RESERVED_KEYS
from provisioner._manifest.rules import clip_text

#: Characters a header name may carry invisibly (a second BOM, zero-width space, NBSP).
_INVISIBLE = "\ufeff\u200b\u00a0 \t"


def _fold(name: str) -> str:
    """A header name as the near-miss check compares it: case folded, trimmed, without
    spaces, dashes or underscores (``Send ID``, ``SEND_ID``, ``sendId`` all give ``sendid``)."""
    folded = name.strip(_INVISIBLE).casefold()
    return "".join(c for c in folded if c not in " -_\t\u00a0")


_FOLDED = {_fold(column): column for column in RESERVED_KEYS}


def near_miss(names: Iterable[str], mapped: Iterable[str] = ()) -> tuple[str, str] | None:
    """The first (name, column) where header name ``name`` reads as the known ``column``
    (campaign_id, send_id, workspace) but is not exactly it, nor mapped by ``--column``.

    Such a column would otherwise be carried through as an unknown pass-through column:
    every row would get a Braze-generated id or the default workspace, silently."""
    skip = set(mapped)
    for name in names:
        column = _FOLDED.get(_fold(name))
        if column is not None and name != column and name not in skip:
            return name, column
    return None


def near_miss_fix(name: str, column: str) -> str:
    """The one-line fix for a near miss: rename it, or map it explicitly."""
    return (
        f"rename it to exactly {column!r}, or map it with --column {column}={name!r} "
        f"(or [manifest] columns = {{ {column} = {name!r} }} in the config)"
    )


def hint(names: list[str]) -> str:
    """Point at a near miss of ``campaign_id`` (case, spaces, dashes), if there is one."""
    found = near_miss(names)
    if found is not None and found[1] == CAMPAIGN_ID:
        return f" (found {clip_text(found[0])!r}: rename it to exactly 'campaign_id')"
    return ""
