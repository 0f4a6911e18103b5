"""Manifests that are not UTF-8, and CSV delimiters (issue 13): refused as a whole, or
decoded when their encoding is named."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pytest

from provisioner._core.models import RawRow, RowError
from provisioner._manifest.lines import scan_utf8
from provisioner._manifest.reader import Manifest
from provisioner.errors import ManifestError

CP1252 = "campaign_id,note\nc1,plain\nc2,Café\n".encode("cp1252")


def open_error(path: str, **kw: object) -> str:
    """Open ``path`` and return the ManifestError message it must raise."""
    with pytest.raises(ManifestError) as info, Manifest(path, **kw):  # type: ignore[arg-type]
        pass
    return str(info.value)


def read(path: str, **kw: object) -> list[RawRow | RowError]:
    """Every record of ``path``."""
    with Manifest(path, **kw) as manifest:  # type: ignore[arg-type]
        return list(manifest)


@pytest.mark.parametrize(
    ("codec", "name"), [("utf-16", "UTF-16"), ("utf-16-be", "UTF-16"), ("utf-32", "UTF-32")]
)
def test_utf16_and_utf32_by_bom_are_refused_with_iconv(
    tmp_path: Path, codec: str, name: str
) -> None:
    """A UTF-16/UTF-32 file (Excel's "Unicode Text") is refused naming its encoding and
    the iconv command; JSONL too."""
    text = "campaign_id\nc1\n"
    data = ("\ufeff" + text).encode(codec) if codec.endswith("-be") else text.encode(codec)
    for suffix in ("csv", "jsonl"):
        path = tmp_path / f"m.{suffix}"
        path.write_bytes(data)
        message = open_error(str(path))
        assert "re-save it as UTF-8 (iconv -f UTF-" in message
        assert f"is {name} text" in message


def test_invalid_utf8_file_is_refused_as_a_whole_naming_line_and_byte(tmp_path: Path) -> None:
    """A Windows-1252 export is refused at open (its ASCII rows are not sent), naming the
    first bad line and byte, and --encoding as the way out."""
    path = tmp_path / "m.csv"
    path.write_bytes(CP1252)
    message = open_error(str(path))
    assert "line 3 is not valid UTF-8 (byte 0xE9 at byte 7 of the line)" in message
    assert "--encoding" in message


def test_invalid_utf8_in_gzip_is_found_too(tmp_path: Path) -> None:
    """The scan reads a .gz manifest decompressed."""
    path = tmp_path / "m.csv.gz"
    path.write_bytes(gzip.compress(CP1252))
    assert "line 3 is not valid UTF-8" in open_error(str(path))


def test_named_encoding_is_decoded_to_utf8(tmp_path: Path) -> None:
    """With --encoding cp1252 the values are decoded (they reach Braze as UTF-8)."""
    path = tmp_path / "m.csv"
    path.write_bytes(CP1252)
    got = read(str(path), encoding="cp1252")
    assert [dict(r.columns)["note"] for r in got if isinstance(r, RawRow)] == ["plain", "Café"]
    utf16 = tmp_path / "u.csv"
    utf16.write_bytes("campaign_id,note\nc1,Zoë\n".encode("utf-16"))
    (row,) = read(str(utf16), encoding="utf-16")
    assert isinstance(row, RawRow)
    assert row.columns == (("campaign_id", "c1"), ("note", "Zoë"))


def test_stdin_keeps_invalid_utf8_as_row_errors() -> None:
    """Standard input cannot be read twice: a bad row there is an invalid_utf8 row error."""
    with Manifest("-", "csv", stdin=io.BytesIO(CP1252)) as manifest:
        got = list(manifest)
    assert [type(r).__name__ for r in got] == ["RawRow", "RowError"]


def test_scan_finds_a_character_cut_by_the_chunk_edge_valid() -> None:
    """A valid multi-byte character across read chunks is not an error; a bad byte's line
    and position are counted across chunks."""
    data = b"a" * ((1 << 20) - 1) + "é\n".encode() + b"x\xffy\n"
    assert scan_utf8(io.BytesIO(data)) == (2, 2, 0xFF)
    assert scan_utf8(io.BytesIO(data[:-4])) is None


@pytest.mark.parametrize(
    ("char", "flag"),
    [(";", "';'"), ("\t", "$'\\t'"), ("|", "'|'")],
    ids=["semicolon", "tab", "pipe"],
)
def test_delimiter_and_hint(char: str, flag: str) -> None:
    """--delimiter CHAR reads a file separated by CHAR; without it the header message names
    the character and the exact shell-quoted flag to pass, for `;`, tab and `|`."""
    data = f"campaign_id{char}send_id\nc1{char}s1\n".encode()
    with Manifest("-", "csv", stdin=io.BytesIO(data), delimiter=char) as manifest:
        (row,) = list(manifest)
    assert isinstance(row, RawRow)
    assert row.columns == (("campaign_id", "c1"), ("send_id", "s1"))
    with pytest.raises(ManifestError) as info:
        Manifest("-", "csv", stdin=io.BytesIO(data)).__enter__()
    hint = f"(it holds {char!r}: if that separates the columns, pass --delimiter {flag});"
    assert f"the header has no campaign_id column {hint}" in str(info.value)


@pytest.mark.parametrize("control", [b"\x0c", b"\x0b"])
def test_jsonl_line_of_form_feed_or_vertical_tab_is_a_row_error(control: bytes) -> None:
    """A JSONL line holding only a form feed or a vertical tab is a malformed_json row (it
    must end in an output file), not a blank line."""
    data = b'{"campaign_id": "c1"}\n' + control + b"\n\n \t\n"
    with Manifest("-", "jsonl", stdin=io.BytesIO(data)) as manifest:
        got = list(manifest)
    assert [type(r).__name__ for r in got] == ["RawRow", "RowError"]
    error = got[1]
    assert isinstance(error, RowError)
    assert (error.line, error.error) == (2, "malformed_json")


@pytest.mark.parametrize("control", [b"\x0c", b"\x0b"])
def test_csv_line_of_form_feed_or_vertical_tab_is_a_row_error(control: bytes) -> None:
    """A CSV line holding only a form feed or a vertical tab is a wrong_column_count row
    (it must end in an output file), not a blank line; inside a value such a character
    splits no line, so the line numbers after it stay right."""
    data = b"campaign_id,send_id\nc1,s1\n" + control + b"\n\nc2,s2" + control + b"x\nc3,s3\n"
    with Manifest("-", "csv", stdin=io.BytesIO(data)) as manifest:
        got = list(manifest)
    assert [(type(r).__name__, r.line) for r in got] == [
        ("RawRow", 2), ("RowError", 3), ("RawRow", 5), ("RawRow", 6),
    ]  # fmt: skip
    error = got[1]
    assert isinstance(error, RowError)
    assert error.error == "wrong_column_count"
    assert dict(got[2].columns)["send_id"] == "s2" + control.decode() + "x"
