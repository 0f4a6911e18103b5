"""Braze's rules for a manifest row: ``validate`` turns a ``RawRow`` into a ``Row`` or a
``RowError``. (Repeated combinations are found later, by ``seen.SeenIndex``.)

Values reach Braze byte-exact: nothing here strips, trims or normalises a value. A row is
either a ``Row`` ready to send or a ``RowError`` whose message names the field, the
problem and the fix. Values echoed in messages are shortened, and a refused row's values
are cut to ``ECHO_MAX`` characters (``clip``), so a hostile huge field cannot produce a
huge message, failures.jsonl record, log line or state-store row.
"""

from __future__ import annotations

import re

import orjson

from provisioner._core.identity import MAX_SEND_ID
from provisioner._core.models import CAMPAIGN_ID, SEND_ID, WORKSPACE, Columns, RawRow, Row, RowError

ERROR_CODES: frozenset[str] = frozenset(
    {
        # --- produced by reader.Manifest (the record cannot be parsed) ---
        "invalid_utf8",  # the record's bytes are not valid UTF-8
        "wrong_column_count",  # a CSV record has more or fewer values than the header
        "malformed_csv",  # a CSV record breaks the quoting rules (unclosed quote, stray CR)
        "malformed_json",  # a JSONL line is not valid JSON
        "not_an_object",  # a JSONL line is valid JSON but not an object (array, string...)
        "unreadable",  # the file could not be read past this line (truncated gzip, I/O error)
        "line_too_long",  # a record is longer than max_row_bytes (skipped without parsing it)
        # --- produced by validate (the record parses but Braze would refuse it) ---
        "missing_field",  # campaign_id is absent (JSONL; a CSV header always has it)
        "wrong_type",  # campaign_id or send_id is not a string (JSON number, list, null...)
        "empty_field",  # campaign_id is the empty string
        "control_character",  # campaign_id contains a control character (category Cc)
        "too_long",  # campaign_id, send_id or workspace over its MAX_* characters
        "not_ascii",  # send_id has a character outside printable ASCII (0x20-0x7E)
    }
)

#: Braze campaign ids are 36 characters; the bound only keeps a hostile field from turning
#: into an oversized request (413) or a huge log line.
MAX_CAMPAIGN_ID = 256
#: Workspace names come from the config; the bound only keeps echoes short.
MAX_WORKSPACE = 256

# Unicode category Cc is exactly U+0000-U+001F and U+007F-U+009F.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_NOT_PRINTABLE_ASCII = re.compile("[^\x20-\x7e]")
_ECHO_LIMIT = 40
#: A refused row's values are echoed (failures.jsonl, logs, state store) up to this many
#: characters; its line number, not the whole value, identifies it.
ECHO_MAX = 200


class _Missing:
    """Marks an absent column, which is not the same as a JSON null."""


_MISSING = _Missing()


def _echo(value: str) -> str:
    """A value as a person can read it in a message: quoted, escaped, at most ~40 chars."""
    if len(value) > _ECHO_LIMIT:
        return repr(value[:_ECHO_LIMIT]) + "…"
    return repr(value)


def clip_text(value: str) -> str:
    """``value`` as echoed for a refused row: whole up to ECHO_MAX characters, else its
    first ECHO_MAX characters and a marker with the original length."""
    if len(value) <= ECHO_MAX:
        return value
    return f"{value[:ECHO_MAX]}…[cut: {len(value):,} characters]"


def clip(value: object) -> object:
    """Like ``clip_text`` for any parsed value; a long JSON list or object becomes its JSON
    text, cut. Short values come back unchanged (the same object)."""
    if isinstance(value, str):
        return clip_text(value)
    if isinstance(value, list | dict) and value:
        text = orjson.dumps(value, default=str).decode()
        return value if len(text) <= ECHO_MAX else clip_text(text)
    return value


def clip_columns(columns: Columns) -> Columns:
    """A refused row's columns with every value clipped (the same tuple when none is long)."""
    clipped = tuple((name, clip(value)) for name, value in columns)
    if all(a[1] is b[1] for a, b in zip(clipped, columns, strict=True)):
        return columns
    return clipped


def _kind(value: object) -> str:
    """Name a JSON value's type the way a person writing JSONL thinks of it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _ids(columns: Columns) -> tuple[object, object, object]:
    """The campaign_id, send_id and workspace values of ``columns`` (_MISSING, None, None
    when absent)."""
    campaign_id: object = _MISSING
    send_id: object = None
    workspace: object = None
    for name, value in columns:
        if name == CAMPAIGN_ID:
            campaign_id = value
        elif name == SEND_ID:
            send_id = value
        elif name == WORKSPACE:
            workspace = value
    return campaign_id, send_id, workspace


def validate(raw: RawRow) -> Row | RowError:
    """Check a parsed record against Braze's rules; return a sendable Row or a RowError."""
    cid, sid, ws = _ids(raw.columns)
    # The usual row, checked without a regex search (printable ASCII has no control
    # character); anything else goes through every rule (``check``), for its error.
    if (
        isinstance(cid, str)
        and 0 < len(cid) <= MAX_CAMPAIGN_ID
        and cid.isascii()
        and cid.isprintable()
        and (
            sid is None
            or sid == ""
            or (
                isinstance(sid, str)
                and len(sid) <= MAX_SEND_ID
                and sid.isascii()
                and sid.isprintable()
            )
        )
        and (ws is None or (isinstance(ws, str) and len(ws) <= MAX_WORKSPACE))
    ):
        return Row(raw.line, cid, sid or None, raw.columns, ws or None)
    return check(raw)


def check(raw: RawRow) -> Row | RowError:
    """``validate`` rule by rule, without its shortcut for plainly valid rows."""
    campaign_id, send_id, workspace = _ids(raw.columns)
    cid = campaign_id if isinstance(campaign_id, str) else None
    sid = send_id if isinstance(send_id, str) and send_id else None

    def error(code: str, field: str, message: str) -> RowError:
        return RowError(
            raw.line,
            code,
            message,
            field,
            None if cid is None else clip_text(cid),
            None if sid is None else clip_text(sid),
            clip_columns(raw.columns),
        )

    if campaign_id is _MISSING:
        return error(
            "missing_field",
            CAMPAIGN_ID,
            'campaign_id is missing: add a "campaign_id" key with the Braze campaign id',
        )
    if cid is None:
        return error(
            "wrong_type",
            CAMPAIGN_ID,
            f"campaign_id is {_kind(campaign_id)}, not a string: write it as a JSON string, "
            'e.g. "campaign_id": "…"',
        )
    if not cid:
        return error(
            "empty_field", CAMPAIGN_ID, "campaign_id is empty: fill in the Braze campaign id"
        )
    if len(cid) > MAX_CAMPAIGN_ID:
        return error(
            "too_long",
            CAMPAIGN_ID,
            f"campaign_id {_echo(cid)} has {len(cid)} characters; at most {MAX_CAMPAIGN_ID} "
            "are accepted and Braze campaign ids have 36: check the column holds the "
            "campaign id",
        )
    bad = _CONTROL.search(cid)
    if bad is not None:
        return error(
            "control_character",
            CAMPAIGN_ID,
            f"campaign_id has a control character U+{ord(bad.group()):04X} at position "
            f"{bad.start() + 1} ({_echo(cid)}): remove it",
        )

    # An absent, null or empty send_id means "let Braze generate one"; the workspace is
    # checked either way.
    if not (send_id is None or send_id == ""):
        if sid is None:
            return error(
                "wrong_type",
                SEND_ID,
                f"send_id is {_kind(send_id)}, not a string: write it as a JSON string, or leave "
                "it out to let Braze generate one",
            )
        if len(sid) > MAX_SEND_ID:
            return error(
                "too_long",
                SEND_ID,
                f"send_id {_echo(sid)} has {len(sid)} characters; Braze allows at most "
                f"{MAX_SEND_ID}: shorten it or leave it empty to let Braze generate one",
            )
        bad = _NOT_PRINTABLE_ASCII.search(sid)
        if bad is not None:
            return error(
                "not_ascii",
                SEND_ID,
                f"send_id has U+{ord(bad.group()):04X} at position {bad.start() + 1} "
                f"({_echo(sid)}); Braze allows only printable ASCII (letters, digits, "
                "punctuation, space): replace that character",
            )
    if workspace is not None and not isinstance(workspace, str):
        return error(
            "wrong_type",
            WORKSPACE,
            f"workspace is {_kind(workspace)}, not a string: write the workspace's name as "
            "the config declares it",
        )
    if workspace is not None and len(workspace) > MAX_WORKSPACE:
        # Workspace names are short config names; a long one would only be echoed whole in
        # the unknown_workspace message.
        return error(
            "too_long",
            WORKSPACE,
            f"workspace {_echo(workspace)} has {len(workspace)} characters; at most "
            f"{MAX_WORKSPACE} are accepted: write the workspace's name as the config declares it",
        )
    return Row(raw.line, cid, sid, raw.columns, workspace or None)
