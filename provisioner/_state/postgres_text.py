"""Text PostgreSQL cannot hold: a NUL (U+0000) in a value the store keeps.

SQLite stores any string; PostgreSQL's ``text`` refuses U+0000 ("PostgreSQL text fields
cannot contain NUL"), and a manifest value (campaign_id, send_id, a pass-through column)
or a server's message may hold one. So that such a row fails or succeeds as it does on
SQLite, every string crosses the connection through a reversible escape: U+0000 is
stored as ``U+FDD0 '0'`` and U+FDD0 itself (a noncharacter, never in real text but
legal) as ``U+FDD0 U+FDD0``. :func:`install` puts the escape into a connection's
adapters, so every parameter (the writer's rows, the reads' keys, ``COPY`` rows) and
every text column read back pass through it, and no SQL knows about it.

Ordinary text pays two substring checks per value. Equality and uniqueness hold
(the escape is injective); only the sort order of escaped values differs from
SQLite's, and no order the tool relies on is by such text.
"""

from __future__ import annotations

import functools
import re
from typing import Any

ESCAPE = "\ufdd0"
_PAIRS = re.compile(ESCAPE + "(.)", re.DOTALL)


def escape(text: str) -> str:
    """``text`` with U+0000 and U+FDD0 escaped (the same ``str`` when it holds neither)."""
    if "\x00" not in text and ESCAPE not in text:
        return text
    return text.replace(ESCAPE, ESCAPE + ESCAPE).replace("\x00", ESCAPE + "0")


def unescape(text: str) -> str:
    """The inverse of :func:`escape`."""
    if ESCAPE not in text:
        return text
    return _PAIRS.sub(lambda m: "\x00" if m[1] == "0" else m[1], text)


def install(conn: Any) -> None:
    """Make ``conn`` (a psycopg connection) escape every str it sends and unescape
    every text value it reads."""
    dumper, binary_dumper, loader, binary_loader = _adapters()
    adapters = conn.adapters
    # The text dumper last: the last one registered is the one ``%s`` picks.
    adapters.register_dumper(str, binary_dumper)
    adapters.register_dumper(str, dumper)
    for name in ("text", "varchar", "bpchar", "name"):
        adapters.register_loader(name, loader)
        adapters.register_loader(name, binary_loader)


@functools.cache
def _adapters() -> tuple[type, type, type, type]:
    """psycopg's pure-Python str adapters with the escape (its C ones cannot be
    overridden), built on first use: psycopg is imported only for PostgreSQL."""
    from psycopg.types import string

    # The checks are inlined: these run once per text value sent or read.
    class Dumper(string.StrDumperUnknown):  # psycopg's default for str parameters
        def dump(self, obj: str) -> bytes:
            if "\x00" in obj or ESCAPE in obj:
                obj = escape(obj)
            return obj.encode(self._encoding)

    class BinaryDumper(string.StrBinaryDumper):
        def dump(self, obj: str) -> bytes:
            if "\x00" in obj or ESCAPE in obj:
                obj = escape(obj)
            return obj.encode(self._encoding)

    class Loader(string.TextLoader):
        def load(self, data: Any) -> Any:
            if not self._encoding:  # SQL_ASCII: psycopg gives bytes, nothing to undo
                return super().load(data)
            text = str(data, self._encoding)
            return unescape(text) if ESCAPE in text else text

    class BinaryLoader(Loader):
        format = string.TextBinaryLoader.format

    return Dumper, BinaryDumper, Loader, BinaryLoader
