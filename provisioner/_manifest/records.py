"""JSONL records: a line becomes a row, a row error or (blank lines) nothing.

Split from ``reader.py`` (which opens the manifest, checks its header and reads CSV):
the JSONL parsing and what both formats share, the ids a malformed record still offers,
the reserved keys and the IDLE marker for long runs of blank lines.
"""

from __future__ import annotations

import json
import re
from collections.abc import Generator, Iterable, Mapping
from typing import Any

import orjson

from provisioner._core.models import CAMPAIGN_ID, SEND_ID, WORKSPACE, Columns, RawRow, RowError
from provisioner._manifest.lines import too_long_error
from provisioner._manifest.rules import clip_columns, clip_text
from provisioner.errors import LineTooLong

#: ``records(idle=True)`` yields IDLE after this many blank lines in a row, so that a
#: reader on the event loop can let it run (a .gz of a billion blank lines took 18 minutes
#: of the loop, signals unanswered).
IDLE_AFTER_BLANKS = 4096


class Idle:
    """The type of IDLE: "blank lines only, so far", for readers that must yield."""


IDLE = Idle()
#: orjson reports "line 1 column 5 (char 4)"; in JSONL the line is ours, only the column helps.
_JSON_POSITION = re.compile(r":? ?line \d+ column (\d+) \(char \d+\)")
#: Keys whose value decides what is sent; a line naming one twice is refused.
RESERVED_KEYS = (CAMPAIGN_ID, SEND_ID, WORKSPACE)
_RESERVED_KEYS = tuple(f'"{key}"'.encode() for key in RESERVED_KEYS)


def row_ids(columns: Columns) -> dict[str, Any]:
    """The RowError fields a malformed record still offers: its columns and string ids."""
    found = dict(columns)
    campaign_id, send_id = found.get(CAMPAIGN_ID), found.get(SEND_ID)
    return {
        "columns": clip_columns(columns),
        "campaign_id": clip_text(campaign_id) if isinstance(campaign_id, str) else None,
        "send_id": clip_text(send_id) if isinstance(send_id, str) else None,
    }


def jsonl_rows(
    items: Iterable[bytes | LineTooLong],
    *,
    max_row_bytes: int,
    idle: bool,
    rename: Mapping[str, str],
) -> Generator[RawRow | RowError | Idle, None, int]:
    """JSONL lines -> rows and row errors (and IDLE markers when ``idle``); returns the
    number of the last physical line read."""
    number = 0
    blanks = 0
    for item in items:
        number += 1
        if isinstance(item, LineTooLong):
            yield too_long_error(item, number, max_row_bytes)
            continue
        raw = item
        if blank(raw):  # a blank line
            if idle:
                blanks += 1
                if blanks >= IDLE_AFTER_BLANKS:
                    blanks = 0
                    yield IDLE
            continue
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            yield bad_json(number, raw, str(exc))
            continue
        if not isinstance(value, dict):
            yield RowError(
                line=number,
                error="not_an_object",
                message=(
                    f"line {number} is a JSON {json_kind(value)}, not an object: each "
                    'line must be one object such as {"campaign_id": "..."}'
                ),
            )
            continue
        twice = repeated_key(raw)
        if twice is not None:
            yield RowError(
                line=number,
                error="malformed_json",
                message=(
                    f"line {number} names the key {twice!r} twice, so which value counts "
                    "is ambiguous: keep one"
                ),
                **row_ids(tuple(value.items())),
            )
            continue
        items_ = tuple(value.items())
        if rename:
            items_ = tuple((rename.get(k, k), v) for k, v in items_)
        yield RawRow(number, items_)
    return number


def bad_json(line: int, raw: bytes, reason: str) -> RowError:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return RowError(
            line=line,
            error="invalid_utf8",
            message=(
                f"line {line} is not valid UTF-8 (byte 0x{raw[exc.start]:02X} at byte "
                f"{exc.start + 1}): save the manifest as UTF-8"
            ),
        )
    where = _JSON_POSITION.sub(r" at column \1", reason)
    return RowError(
        line=line,
        error="malformed_json",
        message=f"line {line} is not valid JSON ({where}): each line must be one JSON object",
    )


def blank(raw: bytes) -> bool:
    """A JSONL line holding only spaces, tabs and its line end is blank (skipped); bytes'
    isspace would count form feed and vertical tab too, and such a line would then land
    in no output file at all: it is a malformed_json row instead."""
    return bool(raw) and not raw.strip(b" \t\r\n")


def repeated_key(raw: bytes) -> str | None:
    """The reserved key a JSON object names twice, if any.

    orjson keeps the last of repeated keys silently; another tool reading the same line
    may keep the first, so a repeated campaign_id/send_id/workspace is refused rather than
    guessed. The exact check (the stdlib parser) runs only on lines that may repeat one:
    a reserved key written twice, or any \\u escape (an escaped key reads the same).
    """
    if b"\\u" not in raw and not any(raw.count(key) > 1 for key in _RESERVED_KEYS):
        return None
    repeated: list[str] = []

    def pairs(items: list[tuple[str, object]]) -> dict[str, object]:
        # Called innermost object first: only the last call (the top level) is kept.
        names = [name for name, _ in items]
        repeated[:] = [n for n in RESERVED_KEYS if names.count(n) > 1]
        return dict(items)

    try:
        json.loads(raw, object_pairs_hook=pairs)
    except (ValueError, RecursionError):
        return None
    return repeated[0] if repeated else None


def json_kind(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return "number"
