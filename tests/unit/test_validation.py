"""Unit tests for Braze's row rules and the duplicate index (no sockets)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provisioner._core.identity import MAX_SEND_ID
from provisioner._core.models import RawRow, Row, RowError
from provisioner._manifest.rules import (
    ECHO_MAX,
    ERROR_CODES,
    MAX_CAMPAIGN_ID,
    clip,
    clip_columns,
    validate,
)
from provisioner._manifest.rules import check as rules

CID = "4c4d6b3e-35f8-4fa8-8f6e-3f0c4b8f7a21"


def check(**columns: object) -> Row | RowError:
    """Validate a row made of ``columns`` at line 7."""
    return validate(RawRow(7, tuple(columns.items())))


def failure(**columns: object) -> RowError:
    """Validate and assert the row is refused."""
    result = check(**columns)
    assert isinstance(result, RowError), result
    assert result.error in ERROR_CODES
    assert result.line == 7
    assert result.columns == clip_columns(tuple(columns.items()))
    return result


def test_valid_row_keeps_values_and_columns_exactly() -> None:
    """A valid row keeps campaign_id, send_id and all columns byte-exact, unstripped."""
    result = check(note="x", campaign_id=f" {CID} ", send_id=" a b ")
    assert result == Row(
        7, f" {CID} ", " a b ", (("note", "x"), ("campaign_id", f" {CID} "), ("send_id", " a b "))
    )
    assert isinstance(result, Row)
    assert result.extra() == (("note", "x"),)


@pytest.mark.parametrize("absent", [{}, {"send_id": ""}, {"send_id": None}])
def test_absent_empty_or_null_send_id_means_none(absent: dict[str, object]) -> None:
    """No send_id column, an empty one or JSON null all mean: let Braze generate one."""
    result = check(campaign_id=CID, **absent)
    assert isinstance(result, Row)
    assert result.send_id is None


def test_missing_campaign_id() -> None:
    """A JSONL record without campaign_id is missing_field on campaign_id."""
    error = failure(send_id="s")
    assert (error.error, error.field, error.send_id) == ("missing_field", "campaign_id", "s")


@pytest.mark.parametrize(
    ("value", "kind"),
    [(42, "a number"), (1.5, "a number"), (None, "null"), ([CID], "a list"), (True, "a boolean")],
)
def test_campaign_id_must_be_a_string(value: object, kind: str) -> None:
    """A non-string campaign_id is wrong_type, naming what it is."""
    error = failure(campaign_id=value)
    assert (error.error, error.field, error.campaign_id) == ("wrong_type", "campaign_id", None)
    assert kind in error.message


def test_empty_campaign_id() -> None:
    """An empty campaign_id is empty_field."""
    error = failure(campaign_id="", send_id="s")
    assert (error.error, error.field, error.campaign_id) == ("empty_field", "campaign_id", "")


@pytest.mark.parametrize(
    ("char", "code"), [("\x00", "U+0000"), ("\t", "U+0009"), ("\x85", "U+0085")]
)
def test_control_character_in_campaign_id(char: str, code: str) -> None:
    """A Cc character in campaign_id is refused with its position and code point."""
    error = failure(campaign_id=f"ab{char}c")
    assert (error.error, error.field) == ("control_character", "campaign_id")
    assert code in error.message
    assert "position 3" in error.message


def test_campaign_id_length_bound() -> None:
    """campaign_id may have 256 characters, not 257; the message stays short."""
    assert isinstance(check(campaign_id="c" * MAX_CAMPAIGN_ID), Row)
    error = failure(campaign_id="c" * 50_000_000)
    assert (error.error, error.field) == ("too_long", "campaign_id")
    assert "50000000 characters" in error.message
    assert len(error.message) < 400


def test_refused_row_echoes_huge_values_cut_with_their_length() -> None:
    """A refused row keeps ECHO_MAX characters of each long value plus the original length."""
    huge = "c" * 50_000_000
    error = failure(campaign_id=huge, note="n" * 1000, small="ok", items=list(range(500)))
    assert error.campaign_id == "c" * ECHO_MAX + "…[cut: 50,000,000 characters]"
    found = dict(error.columns)
    assert found["campaign_id"] == error.campaign_id
    assert found["note"] == "n" * ECHO_MAX + "…[cut: 1,000 characters]"
    assert found["small"] == "ok"
    assert isinstance(found["items"], str)
    assert found["items"].startswith("[0,1,2,")
    assert len(found["items"]) < ECHO_MAX + 40


def test_clip_keeps_short_values_as_the_same_objects() -> None:
    """Short values and columns without long values come back unchanged, not copied."""
    columns = (("campaign_id", "c" * ECHO_MAX), ("n", [1, 2]), ("x", None), ("y", 3))
    assert clip_columns(columns) is columns
    assert clip(columns[1][1]) is columns[1][1]


def test_long_send_id_and_workspace_are_cut_in_the_echo() -> None:
    """A long send_id is cut in the error's send_id; a long workspace is too_long."""
    error = failure(campaign_id=CID, send_id="s" * 10_000)
    assert error.send_id == "s" * ECHO_MAX + "…[cut: 10,000 characters]"
    error = failure(campaign_id=CID, workspace="w" * 10_000)
    assert (error.error, error.field) == ("too_long", "workspace")
    assert len(error.message) < 400


def test_send_id_must_be_a_string() -> None:
    """A JSON number as send_id is wrong_type on send_id; campaign_id is still reported."""
    error = failure(campaign_id=CID, send_id=12)
    assert (error.error, error.field, error.campaign_id, error.send_id) == (
        "wrong_type",
        "send_id",
        CID,
        None,
    )


def test_send_id_length_bound_message() -> None:
    """send_id may have 64 characters; 65 is too_long with Braze's limit and the fix."""
    assert isinstance(check(campaign_id=CID, send_id="s" * MAX_SEND_ID), Row)
    error = failure(campaign_id=CID, send_id="s" * 65)
    assert (error.error, error.field, error.send_id) == ("too_long", "send_id", "s" * 65)
    assert "65 characters; Braze allows at most 64" in error.message
    assert "leave it empty" in error.message
    assert "s" * 41 not in error.message  # the echoed value is truncated


@pytest.mark.parametrize(
    ("send_id", "code", "position"),
    [("abcé", "U+00E9", 4), ("a\x7fb", "U+007F", 2), ("\tx", "U+0009", 1), ("a😀", "U+1F600", 2)],
)
def test_send_id_must_be_printable_ascii(send_id: str, code: str, position: int) -> None:
    """A send_id character outside 0x20-0x7E is not_ascii, naming position and code point."""
    error = failure(campaign_id=CID, send_id=send_id)
    assert (error.error, error.field) == ("not_ascii", "send_id")
    assert code in error.message
    assert f"position {position}" in error.message


def test_printable_ascii_edges_are_allowed() -> None:
    """Space and tilde, the ends of printable ASCII, are valid send_id characters."""
    assert isinstance(check(campaign_id=CID, send_id=" ~"), Row)


def test_error_codes_cover_what_validation_produces() -> None:
    """Every code is documented in ERROR_CODES, including the reader's."""
    assert {
        "missing_field",
        "wrong_type",
        "empty_field",
        "control_character",
        "too_long",
        "not_ascii",
        "invalid_utf8",
        "wrong_column_count",
        "malformed_csv",
        "malformed_json",
        "not_an_object",
        "unreadable",
        "line_too_long",
    } == ERROR_CODES


@given(campaign_id=st.text(max_size=300), send_id=st.one_of(st.none(), st.text(max_size=80)))
def test_validate_never_raises_and_never_alters(campaign_id: str, send_id: str | None) -> None:
    """Any strings give a Row with the exact values or a RowError with a known code."""
    result = check(campaign_id=campaign_id, send_id=send_id)
    if isinstance(result, Row):
        assert result.campaign_id == campaign_id
        assert result.send_id == (send_id or None)
    else:
        assert result.error in ERROR_CODES


@pytest.mark.parametrize("send_id", [None, ""])
def test_row_without_send_id_keeps_its_workspace(send_id: str | None) -> None:
    """A row without a send_id still goes to the workspace its column names."""
    result = check(campaign_id=CID, send_id=send_id, workspace="eu")
    assert isinstance(result, Row)
    assert result.workspace == "eu"
    assert failure(campaign_id=CID, send_id=send_id, workspace=7).field == "workspace"


_PLAIN = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=8)
_ID_VALUES = st.one_of(
    _PLAIN,
    _PLAIN,  # the shortcut's own case, as often as all the others
    st.none(),
    st.sampled_from([0, 1, False, True, 1.5, [], ["a"]]),
    st.text(max_size=6),
    st.text(st.characters(min_codepoint=0, max_codepoint=0xA0), max_size=6),  # controls, DEL
    st.text(st.sampled_from("a~ \x7f"), min_size=60, max_size=70),  # around MAX_SEND_ID
    st.text(st.sampled_from("ab"), min_size=250, max_size=260),  # around MAX_CAMPAIGN_ID
)
_ABSENT = object()
_NAMES = ["campaign_id", "send_id", "note"]


@settings(max_examples=400)
@given(
    cid=st.one_of(st.just(_ABSENT), _ID_VALUES),
    sid=st.one_of(st.just(_ABSENT), _ID_VALUES),
    ws=st.one_of(st.just(_ABSENT), _ID_VALUES),
    extra=st.lists(
        st.tuples(st.sampled_from(["campaign_id", "send_id", "note"]), _ID_VALUES), max_size=1
    ),
)
def test_shortcut_for_plain_rows_agrees_with_every_rule(
    cid: object, sid: object, ws: object, extra: list[tuple[str, object]]
) -> None:
    """validate's shortcut for plainly valid rows gives what the rules one by one give
    (validation.check), for any values of campaign_id, send_id and workspace, absent or
    repeated columns included."""
    named = (("campaign_id", cid), ("send_id", sid), ("workspace", ws))
    raw = RawRow(7, tuple((n, v) for n, v in named if v is not _ABSENT) + tuple(extra))
    assert validate(raw) == rules(raw)
