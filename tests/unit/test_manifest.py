"""Unit tests for the streaming manifest reader (no sockets)."""

from __future__ import annotations

import csv
import gzip
import io
import os
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provisioner._core.models import RawRow, RowError
from provisioner._manifest.columns import near_miss
from provisioner._manifest.lines import Lines
from provisioner._manifest.reader import FIELD_SIZE_LIMIT, Manifest, detect_format
from provisioner.errors import ManifestError

HEADER = b"campaign_id,send_id,note\n"


def read(data: bytes, fmt: str = "csv") -> list[RawRow | RowError]:
    """Read ``data`` as a manifest on stdin and return every record."""
    with Manifest("-", fmt, stdin=io.BytesIO(data)) as manifest:
        return list(manifest)


def rows(data: bytes, fmt: str = "csv") -> list[RawRow]:
    """Read ``data`` and assert every record parsed."""
    out = read(data, fmt)
    assert all(isinstance(r, RawRow) for r in out), out
    return [r for r in out if isinstance(r, RawRow)]


def errors(data: bytes, fmt: str = "csv") -> list[RowError]:
    """Read ``data`` and return only the row errors."""
    return [r for r in read(data, fmt) if isinstance(r, RowError)]


def open_error(data: bytes, fmt: str = "csv") -> str:
    """Open ``data`` and return the ManifestError message it must raise."""
    with pytest.raises(ManifestError) as info, Manifest("-", fmt, stdin=io.BytesIO(data)):
        pass
    return str(info.value)


# --- detect_format -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("m.csv", ("csv", False)),
        ("m.CSV", ("csv", False)),
        ("m.csv.gz", ("csv", True)),
        ("m.jsonl", ("jsonl", False)),
        ("m.jsonl.gz", ("jsonl", True)),
        ("m.ndjson", ("jsonl", False)),
        ("m.ndjson.gz", ("jsonl", True)),
    ],
)
def test_detect_format_from_suffix(tmp_path: Path, name: str, expected: tuple[str, bool]) -> None:
    """The format and compression follow the file name's suffixes."""
    assert detect_format(str(tmp_path / name), None) == expected


def test_detect_format_explicit_overrides_and_sniffs_gzip(tmp_path: Path) -> None:
    """An explicit format wins over the suffix; gzip is sniffed from the magic bytes."""
    path = tmp_path / "export.txt"
    path.write_bytes(gzip.compress(b"campaign_id\nc\n"))
    assert detect_format(str(path), "csv") == ("csv", True)
    assert detect_format(str(tmp_path / "m.jsonl.gz"), "csv") == ("csv", True)


def test_detect_format_refuses_unknown_suffix_and_format(tmp_path: Path) -> None:
    """An unknown suffix without --format, or an unknown --format, is a ManifestError."""
    with pytest.raises(ManifestError, match="--format"):
        detect_format(str(tmp_path / "m.txt"), None)
    with pytest.raises(ManifestError, match="unknown manifest format"):
        detect_format("m.csv", "xml")


def test_stdin_needs_explicit_format() -> None:
    """Reading stdin without a format tells the user to pass --format."""
    with pytest.raises(ManifestError, match="--format"):
        detect_format("-", None)
    with pytest.raises(ManifestError, match="--format"), Manifest("-", stdin=io.BytesIO(b"")):
        pass


# --- open-time checks --------------------------------------------------------------------


def test_missing_file_and_folder_are_refused(tmp_path: Path) -> None:
    """A missing path and a folder are refused at open, naming the path."""
    missing = tmp_path / "nope.csv"
    with pytest.raises(ManifestError, match=r"nope\.csv"), Manifest(str(missing)):
        pass
    folder = tmp_path / "dir.csv"
    folder.mkdir()
    with pytest.raises(ManifestError, match="is a folder"), Manifest(str(folder)):
        pass


def test_empty_csv_is_refused() -> None:
    """An empty CSV, or one with only blank lines, has no header and is refused."""
    assert "is empty" in open_error(b"")
    assert "is empty" in open_error(b"\n\r\n\n")


def test_header_without_campaign_id_is_refused_with_hint() -> None:
    """A header without campaign_id is refused, naming the line and any near miss."""
    message = open_error(b"Campaign ID,send_id\nc,s\n")
    assert "line 1" in message
    assert "'Campaign ID'" in message
    assert "campaign_id" in message


def test_duplicate_header_names_are_refused() -> None:
    """A header naming a column twice is refused with both positions."""
    message = open_error(b"campaign_id,note,note\nc,a,b\n")
    assert "'note' twice" in message
    assert "columns 2 and 3" in message


def test_utf16_header_is_refused() -> None:
    """A UTF-16 file is refused at open with a hint to save it as UTF-8."""
    message = open_error("campaign_id\nc\n".encode("utf-16"))
    assert "UTF-16" in message
    assert "UTF-8" in message


def test_cr_only_line_endings_are_refused_at_open() -> None:
    """Old-Mac CR-only line endings make the header invalid: refused, not misread."""
    assert "not valid CSV" in open_error(b"campaign_id,send_id\rc,s\r")


def test_jsonl_first_object_without_campaign_id_is_refused() -> None:
    """The first JSONL object lacking campaign_id is refused at open, naming its line."""
    message = open_error(b'\n[1]\n{"campaign":"c"}\n', "jsonl")
    assert "line 3" in message
    assert "campaign_id" in message


def test_jsonl_peek_keeps_the_lines_it_read() -> None:
    """Lines read by the open-time check are still yielded, in order, with their numbers."""
    out = read(b'{bad\n\n{"campaign_id":"c1"}\n{"campaign_id":"c2"}\n', "jsonl")
    assert [(r.line, type(r).__name__) for r in out] == [
        (1, "RowError"),
        (3, "RawRow"),
        (4, "RawRow"),
    ]


def test_empty_jsonl_has_no_rows() -> None:
    """An empty JSONL manifest opens and yields nothing (there is no header to check)."""
    assert read(b"", "jsonl") == []


def test_iterating_outside_with_is_an_error() -> None:
    """Iterating a Manifest that was not entered is a programming error."""
    with pytest.raises(RuntimeError):
        iter(Manifest("-", "csv", stdin=io.BytesIO(HEADER)))


# --- parsing -----------------------------------------------------------------------------


def test_header_only_csv_has_no_rows() -> None:
    """A header-only CSV opens, knows its header and yields nothing."""
    with Manifest("-", "csv", stdin=io.BytesIO(HEADER)) as manifest:
        assert manifest.header == ("campaign_id", "send_id", "note")
        assert list(manifest) == []


def test_bom_is_removed_from_the_header() -> None:
    """A UTF-8 BOM does not become part of the first column name."""
    with Manifest("-", "csv", stdin=io.BytesIO(b"\xef\xbb\xbf" + HEADER + b"c,s,n\n")) as m:
        assert m.header == ("campaign_id", "send_id", "note")
        assert [r.columns for r in m] == [(("campaign_id", "c"), ("send_id", "s"), ("note", "n"))]


def test_crlf_and_mixed_line_endings_with_line_numbers() -> None:
    """CRLF and LF may be mixed; blank lines are skipped but still counted."""
    data = b"campaign_id,send_id\r\nc1,s1\r\n\r\nc2,s2\n\nc3,\r\n"
    assert [(r.line, r.columns[0][1], r.columns[1][1]) for r in rows(data)] == [
        (2, "c1", "s1"),
        (4, "c2", "s2"),
        (6, "c3", ""),
    ]


def test_quoted_multiline_fields_keep_start_line() -> None:
    """A quoted field with commas, quotes and newlines parses; line is where it starts."""
    data = HEADER + b'c1,s1,"a, ""b""\r\nsecond\nthird"\nc2,s2,x\n'
    out = rows(data)
    assert out[0].line == 2
    assert out[0].columns[2] == ("note", 'a, "b"\r\nsecond\nthird')
    assert out[1].line == 5


def test_values_are_not_stripped() -> None:
    """CSV values are kept exactly as written, spaces and all."""
    out = rows(HEADER + b" c1 , s1,note \n")
    assert out[0].columns == (("campaign_id", " c1 "), ("send_id", " s1"), ("note", "note "))


def test_gzip_file_by_suffix_and_stdin_by_magic(tmp_path: Path) -> None:
    """Gzip is read from a .gz file and sniffed on stdin."""
    data = HEADER + b"c1,s1,n\n"
    path = tmp_path / "m.csv.gz"
    path.write_bytes(gzip.compress(data))
    with Manifest(str(path)) as manifest:
        assert manifest.gzipped
        assert manifest.display_name == str(path)
        assert [r.line for r in manifest] == [2]
    with Manifest("-", "csv", stdin=io.BytesIO(gzip.compress(data))) as manifest:
        assert manifest.gzipped
        assert manifest.display_name == "<stdin>"
        assert [r.line for r in manifest] == [2]


def test_named_pipe_is_sniffed_without_losing_bytes(tmp_path: Path) -> None:
    """A FIFO path (like bash's <(zcat m.gz)) is read whole, gzip sniffed on the stream."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert detect_format(str(fifo), "csv") == ("csv", False)  # stat only, nothing consumed

    def feed() -> None:
        with open(fifo, "wb") as pipe:
            pipe.write(gzip.compress(HEADER + b"c1,s1,n\n"))

    writer = threading.Thread(target=feed)
    writer.start()
    try:
        with Manifest(str(fifo), "csv") as manifest:
            assert manifest.gzipped
            assert [r.columns[0] for r in manifest] == [("campaign_id", "c1")]
    finally:
        writer.join()


def test_stdin_is_not_closed() -> None:
    """Leaving the with block does not close the caller's stdin stream."""
    stdin = io.BytesIO(HEADER)
    with Manifest("-", "csv", stdin=stdin) as manifest:
        list(manifest)
    assert not stdin.closed


def test_jsonl_keeps_types_and_key_order() -> None:
    """JSONL values keep their JSON types and keys keep object order."""
    data = b'{"z":1,"campaign_id":"c","send_id":null,"a":[1,{"b":true}]}\r\n'
    assert rows(data, "jsonl")[0].columns == (
        ("z", 1),
        ("campaign_id", "c"),
        ("send_id", None),
        ("a", [1, {"b": True}]),
    )


def test_jsonl_bom_and_blank_lines() -> None:
    """A BOM on the first JSONL line is removed; whitespace-only lines are skipped."""
    out = rows(b'\xef\xbb\xbf{"campaign_id":"c"}\n  \t\n{"campaign_id":"d"}', "jsonl")
    assert [(r.line, r.columns) for r in out] == [
        (1, (("campaign_id", "c"),)),
        (3, (("campaign_id", "d"),)),
    ]


def test_five_megabyte_field_parses_under_a_raised_row_limit(tmp_path: Path) -> None:
    """A field far over csv's default limit parses when max_row_bytes allows it."""
    big = b"x" * (5 * 1024 * 1024)
    path = tmp_path / "big.csv"
    path.write_bytes(HEADER + b"c," + big + b",n\nc2,s,n\n")
    with Manifest(str(path), max_row_bytes=8 * 1024 * 1024) as manifest:
        out = list(manifest)
    assert isinstance(out[0], RawRow)
    assert len(str(out[0].columns[1][1])) == len(big)
    assert out[1].line == 3


def test_field_over_the_limit_is_a_row_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A field beyond FIELD_SIZE_LIMIT (an unbalanced quote) is malformed_csv, not a crash."""
    monkeypatch.setattr(csv, "field_size_limit", csv.field_size_limit)
    csv.field_size_limit(1000)
    try:
        data = HEADER + b'c1,"s1,n\n' + b"x" * 2000 + b"\nc2,s2,n\n"
        out = read(data)
    finally:
        csv.field_size_limit(FIELD_SIZE_LIMIT)
    assert isinstance(out[0], RowError)
    assert out[0].error == "malformed_csv"
    assert "unbalanced" in out[0].message


def test_nul_bytes_do_not_crash() -> None:
    """NUL bytes in CSV values are kept; in a JSONL line they are malformed_json."""
    assert rows(HEADER + b"c\x00,s,n\n")[0].columns[0] == ("campaign_id", "c\x00")
    out = read(b'{"campaign_id":"c"}\n{"campaign_id":"\x00"}\n', "jsonl")
    assert isinstance(out[1], RowError)
    assert out[1].error == "malformed_json"


# --- malformed records -------------------------------------------------------------------


def test_wrong_column_count_fewer_and_more() -> None:
    """Too few or too many values is wrong_column_count, saying expected vs got."""
    out = errors(HEADER + b"c1,s1\nc2,s2,n,extra\nc3,s3,n\n")
    assert [(e.line, e.error) for e in out] == [(2, "wrong_column_count")] * 1 + [
        (3, "wrong_column_count")
    ]
    assert "has 2 columns, the header has 3" in out[0].message
    assert "has 4 columns, the header has 3" in out[1].message
    assert out[0].campaign_id == "c1"
    assert out[0].send_id == "s1"


def test_invalid_utf8_csv_record() -> None:
    """A CSV record with invalid UTF-8 is invalid_utf8, with the byte shown, and reading goes on."""
    out = read(HEADER + b"c1,s\xe9,n\nc2,s2,n\n")
    assert isinstance(out[0], RowError)
    assert out[0].error == "invalid_utf8"
    assert "send_id has byte 0xE9 at character 2" in out[0].message
    assert out[0].columns[1] == ("send_id", "s\\xe9")
    orjson.dumps(out[0].columns)  # safe to write to failures.jsonl
    assert isinstance(out[1], RawRow)


def test_invalid_utf8_jsonl_record() -> None:
    """A JSONL line with invalid UTF-8 is invalid_utf8, not malformed_json."""
    out = errors(b'{"campaign_id":"c"}\n{"campaign_id":"\xff"}\n', "jsonl")
    assert [(e.line, e.error) for e in out] == [(2, "invalid_utf8")]


def test_malformed_json_and_not_an_object() -> None:
    """Bad JSON is malformed_json (with the column); a non-object value is not_an_object."""
    out = errors(b'{"campaign_id":"c"}\n{"campaign_id":\n"text"\n42\n', "jsonl")
    assert [(e.line, e.error) for e in out] == [
        (2, "malformed_json"),
        (3, "not_an_object"),
        (4, "not_an_object"),
    ]
    assert "column" in out[0].message
    assert "JSON string" in out[1].message


@pytest.mark.parametrize(
    ("record", "fragment"),
    [
        (b'c1,"s1"x,n\n', "doubled"),
        (b"c1,s\r1,n\n", "carriage return"),
        (b'c1,s1,"never closed\n', "never closed"),
    ],
)
def test_malformed_csv_is_a_row_error(record: bytes, fragment: str) -> None:
    """Quoting errors are malformed_csv row errors naming the problem, never exceptions."""
    out = read(HEADER + record + b"c2,s2,n\n")
    assert isinstance(out[0], RowError)
    assert out[0].error == "malformed_csv"
    assert out[0].line == 2
    assert fragment in out[0].message


def test_truncated_gzip_ends_with_unreadable_and_no_partial_row() -> None:
    """A truncated gzip yields whole rows, then one `unreadable` error, at any cut point."""
    body = b"".join(b"campaign%06d,s,n\n" % i for i in range(3000))
    packed = gzip.compress(HEADER + body)
    for cut in range(len(packed) // 3, len(packed) - 1, max(1, len(packed) // 50)):
        out = read(packed[:cut])
        *good, last = out
        assert isinstance(last, RowError), cut
        assert last.error == "unreadable"
        assert "could not be read" in last.message
        assert all(isinstance(r, RawRow) and len(str(r.columns[0][1])) == 14 for r in good)
        assert last.line == len(good) + 2


class _FailingStream(io.RawIOBase):
    """A stream that returns ``data`` and then fails like a disk with a bad sector."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._data:
            raise OSError(5, "Input/output error")
        n = min(len(buffer), len(self._data))
        buffer[:n] = self._data[:n]
        self._data = self._data[n:]
        return n


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_mid_file_read_error_is_unreadable(fmt: str) -> None:
    """An I/O error mid-file yields one unreadable error at the next line, then stops."""
    if fmt == "csv":
        data = HEADER + b"c1,s1,n\nc2,s2,n\n"
    else:
        data = b'{"campaign_id":"c1"}\n{"campaign_id":"c2"}\n'
    stream = io.BufferedReader(_FailingStream(data))
    with Manifest("-", fmt, stdin=stream) as manifest:
        out = list(manifest)
    last = out[-1]
    assert isinstance(last, RowError)
    assert last.error == "unreadable"
    assert "Input/output error" in last.message
    assert last.line == data.count(b"\n") + 1
    assert all(isinstance(r, RawRow) for r in out[:-1])


class _Generated(io.RawIOBase):
    """A manifest of ``count`` rows produced on the fly, never held in memory."""

    def __init__(self, count: int) -> None:
        self._chunks = self._produce(count)
        self._pending = b""

    @staticmethod
    def _produce(count: int) -> Iterator[bytes]:
        yield HEADER
        for start in range(0, count, 1000):
            yield b"".join(
                b"0123456789abcdef0123456789abcdef%04d,send-%d,note\n" % (i % 9999, i)
                for i in range(start, min(count, start + 1000))
            )

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            self._pending = next(self._chunks, b"")
            if not self._pending:
                return 0
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def _peak_reading(rows: int) -> int:
    """Traced peak memory (bytes) of reading a generated manifest of ``rows`` rows."""
    tracemalloc.start()
    try:
        stream = io.BufferedReader(_Generated(rows))
        with Manifest("-", "csv", stdin=stream) as manifest:
            count = sum(1 for _ in manifest)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == rows
    return peak


def test_memory_does_not_grow_with_the_row_count() -> None:
    """Reading 4x the rows does not raise the traced peak (holding them would, 4x)."""
    small, large = _peak_reading(5_000), _peak_reading(20_000)
    assert large < 1.5 * small + 256 * 1024


@pytest.mark.slow
def test_memory_stays_constant_over_many_rows() -> None:
    """Reading 200k rows keeps traced memory far below what holding the rows would take."""
    # Holding the rows would take > 50 MB; streaming stays around a few hundred kB.
    assert _peak_reading(200_000) < 5 * 1024 * 1024


# --- round trips -------------------------------------------------------------------------

_CHARS = st.characters(codec="utf-8")  # any character UTF-8 can encode (no surrogates)
_TEXT = st.text(_CHARS, max_size=30)
_NAMES = st.lists(
    # A known column's name, or one that reads as it ("WORKSPACE"), is refused by design.
    st.text(_CHARS, min_size=1, max_size=12).filter(
        lambda n: n not in ("campaign_id", "send_id", "workspace") and near_miss([n]) is None
    ),
    max_size=3,
    unique=True,
)


@st.composite
def _tables(draw: st.DrawFn) -> tuple[list[str], list[list[str]]]:
    names = ["campaign_id", "send_id", *draw(_NAMES)]
    body = draw(st.lists(st.lists(_TEXT, min_size=len(names), max_size=len(names)), max_size=8))
    return names, body


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(table=_tables(), terminator=st.sampled_from(["\r\n", "\n"]), bom=st.booleans())
def test_csv_round_trip(
    table: tuple[list[str], list[list[str]]], terminator: str, bom: bool
) -> None:
    """Any rows the csv module writes are read back identically, at their physical lines."""
    names, body = table
    text = io.StringIO()
    # With an LF terminator the csv module leaves a lone CR unquoted, which no reader can
    # tell from a line ending; quoting every field keeps that variant unambiguous.
    if terminator == "\r\n":
        writer = csv.writer(text, lineterminator=terminator, quoting=csv.QUOTE_MINIMAL)
    else:
        writer = csv.writer(text, lineterminator=terminator, quoting=csv.QUOTE_ALL)
    writer.writerow(names)
    starts = []
    for values in body:
        starts.append(text.getvalue().count("\n") + 1)
        writer.writerow(values)
    data = (b"\xef\xbb\xbf" if bom else b"") + text.getvalue().encode()
    out = rows(data)
    assert [r.columns for r in out] == [tuple(zip(names, v, strict=True)) for v in body]
    assert [r.line for r in out] == starts


@settings(max_examples=200)
@given(
    body=st.lists(
        st.dictionaries(
            st.text(_CHARS, max_size=10),
            st.one_of(_TEXT, st.integers(-(2**63), 2**63 - 1), st.none(), st.booleans()),
            max_size=4,
        ),
        max_size=8,
    )
)
def test_jsonl_round_trip(body: list[dict[str, Any]]) -> None:
    """Any objects orjson writes, one per line, are read back identically in key order."""
    objects = [{"campaign_id": "c", **obj} for obj in body]
    data = b"".join(orjson.dumps(o) + b"\n" for o in objects)
    out = rows(data, "jsonl")
    assert [r.columns for r in out] == [tuple(o.items()) for o in objects]
    assert [r.line for r in out] == list(range(1, len(objects) + 1))


class _CutStream:
    """A decompressed stream that hands out a partial last line, then reports truncation."""

    def __init__(self) -> None:
        self._lines = [b"campaign_id\n", b"c1\n", b"c2-trunc"]

    def readline(self, size: int = -1) -> bytes:
        if self._lines:
            return self._lines.pop(0)
        raise EOFError("Compressed file ended before the end-of-stream marker was reached")


def test_partial_last_line_of_truncated_gzip_is_not_a_row() -> None:
    """A gzip line without LF is only yielded once a further read proves a clean end."""
    lines = Lines(_CutStream(), confirm_eof=True)  # type: ignore[arg-type]
    assert list(lines) == [b"campaign_id\n", b"c1\n"]
    assert lines.failure is not None
    assert "ended" in lines.failure
