"""The manifest reader under hostile bytes: row limits, ambiguous JSON, and random input.

The hypothesis tests feed random bytes (biased towards the bytes that matter to CSV, JSON,
UTF-8 and gzip) to both readers and check that nothing escapes but ManifestError at open,
that every record is a RawRow or a RowError with a documented code, and that every line
is accounted for: a row, a reported bad line, or a blank line.
"""

from __future__ import annotations

import gzip
import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provisioner._core.models import RawRow, RowError
from provisioner._manifest.reader import Manifest
from provisioner._manifest.rules import ERROR_CODES, validate
from provisioner.errors import ManifestError

from .test_manifest import HEADER, read, rows


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_line_over_max_row_bytes_is_line_too_long_and_reading_goes_on(fmt: str) -> None:
    """A line past max_row_bytes is one line_too_long row error; the next rows still parse."""
    big = b"x" * 5000
    if fmt == "csv":
        data = HEADER + b"c1,s1,n\nc2,s2," + big + b"\r\nc3,s3,n\n"
    else:
        data = b'{"campaign_id":"c1"}\n{"campaign_id":"' + big + b'"}\n{"campaign_id":"c3"}\n'
    with Manifest("-", fmt, stdin=io.BytesIO(data), max_row_bytes=1000) as manifest:
        out = list(manifest)
    first = 2 if fmt == "csv" else 1
    assert [(r.line, type(r).__name__) for r in out] == [
        (first, "RawRow"),
        (first + 1, "RowError"),
        (first + 2, "RawRow"),
    ]
    error = out[1]
    assert isinstance(error, RowError)
    assert error.error == "line_too_long"
    assert f"line {first + 1} is {len(data.splitlines(keepends=True)[first]):,} bytes" in (
        error.message
    )
    assert "max_row_bytes (1,000)" in error.message


def test_record_spanning_lines_over_max_row_bytes_restarts_at_the_next_line() -> None:
    """An unclosed quote stops at max_row_bytes: one error at its start, then reading resyncs."""
    body = b"".join(b"c%d,s%d,n\n" % (i, i) for i in range(200))
    data = HEADER + b'c0,"open,n\n' + body
    with Manifest("-", "csv", stdin=io.BytesIO(data), max_row_bytes=500) as manifest:
        out = list(manifest)
    first = out[0]
    assert isinstance(first, RowError)
    assert first.error == "line_too_long"
    assert first.line == 2
    assert "the record starting at line 2 passes max_row_bytes (500) at line" in first.message
    rest = out[1:]
    assert rest
    assert all(isinstance(r, RawRow) for r in rest)
    assert rest[-1].line == 202


def test_blank_lines_before_the_header_do_not_count_towards_it() -> None:
    """Many blank lines before the header are skipped one by one, not summed as a record."""
    with Manifest("-", "csv", stdin=io.BytesIO(b"\n" * 3000 + HEADER), max_row_bytes=1024) as m:
        assert m.header == ("campaign_id", "send_id", "note")


def test_header_over_max_row_bytes_is_refused() -> None:
    """A header past max_row_bytes stops the run at open, naming the limit."""
    data = b"campaign_id," + b"x" * 3000 + b"\nc,s\n"
    with (
        pytest.raises(ManifestError, match="header is longer than max_row_bytes"),
        Manifest("-", "csv", stdin=io.BytesIO(data), max_row_bytes=1000),
    ):
        pass


@pytest.mark.parametrize(
    "line",
    [
        b'{"campaign_id":"a","campaign_id":"b"}',
        b'{"campaign_id":"a","send_id":"s","send\\u005fid":"t"}',
        b'{"workspace":"eu","campaign_id":"a","workspace":"us"}',
    ],
)
def test_jsonl_repeated_reserved_key_is_malformed(line: bytes) -> None:
    """A JSONL object naming campaign_id/send_id/workspace twice is refused, not guessed."""
    out = read(b'{"campaign_id":"ok"}\n' + line + b"\n", "jsonl")
    assert isinstance(out[0], RawRow)
    error = out[1]
    assert isinstance(error, RowError)
    assert (error.line, error.error) == (2, "malformed_json")
    assert "twice" in error.message


def test_jsonl_repeats_elsewhere_and_escapes_are_fine() -> None:
    """Repeated pass-through or nested keys, and escaped ids, still parse as rows."""
    out = rows(
        b'{"campaign_id":"caf\\u00e9","note":1,"note":2}\n'
        b'{"campaign_id":"c","x":{"campaign_id":1,"campaign_id":2}}\n',
        "jsonl",
    )
    assert out[0].columns == (("campaign_id", "café"), ("note", 2))
    assert out[1].columns == (("campaign_id", "c"), ("x", {"campaign_id": 2}))


# --- random bytes ------------------------------------------------------------------------

#: Bytes and sequences that steer the parsers into their corner cases.
_TOKENS = st.sampled_from(
    [b'"', b",", b"\n", b"\r", b"\r\n", b"\x00", b"\xef\xbb\xbf", b"\xff", b"\xc3", b"\xc3\xa9",
     b"\xed\xa0\x80", b"\xe2\x80\xae", b"{", b"}", b"[", b"]", b":", b'"campaign_id"',
     b'"send_id"', b"\\u005f", b"\\", b" ", b"\t", b"x" * 40, b"campaign_id"]
)  # fmt: skip
_BODY = st.lists(st.one_of(_TOKENS, st.binary(max_size=6)), max_size=40).map(b"".join)
_HEADERS = st.sampled_from([HEADER, b"\xef\xbb\xbfcampaign_id\r\n", b"campaign_id,send_id\n"])
#: A small row limit sometimes, so the line_too_long path is fuzzed too.
_LIMITS = st.sampled_from([32, 64, 1024 * 1024])


def _read_all(data: bytes, fmt: str, limit: int) -> list[RawRow | RowError] | None:
    """Every record, or None when the file is refused at open (the only allowed raise)."""
    refusal = ""
    try:
        with Manifest("-", fmt, stdin=io.BytesIO(data), max_row_bytes=limit) as manifest:
            out = list(manifest)
    except ManifestError as exc:
        refusal = str(exc)
    if refusal:
        assert "\n" not in refusal
        return None
    for item in out:
        if isinstance(item, RowError):
            assert item.error in ERROR_CODES
        else:
            assert isinstance(item, RawRow)
            checked = validate(item)  # never raises either
            assert not isinstance(checked, RowError) or checked.error in ERROR_CODES
    lines = [item.line for item in out]
    assert lines == sorted(set(lines)), "each record once, in file order"
    return out


def _split_lf(data: bytes) -> list[bytes]:
    parts = data.split(b"\n")
    lines = [part + b"\n" for part in parts[:-1]]
    return [*lines, parts[-1]] if parts[-1] else lines


def _expected_records(data: bytes, limit: int, *, first: int, blank: bytes) -> list[int]:
    """The lines that must yield one record each when no record spans lines: every line
    over the limit, and every line that is not blank (``blank`` strips to nothing)."""
    expected = []
    for number, raw in enumerate(_split_lf(data), 1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if number >= first and (len(raw) > limit or raw.strip(blank) != b"" or raw == b""):
            expected.append(number)
    return expected


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_BODY, limit=_LIMITS)
def test_random_bytes_as_jsonl_account_for_every_line(body: bytes, limit: int) -> None:
    """Any bytes as JSONL: each non-blank line is exactly one row or one row error."""
    out = _read_all(body, "jsonl", limit)
    if out is None:
        return
    expected = _expected_records(body, limit, first=1, blank=b" \t\r\n")
    assert [item.line for item in out] == expected


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header=_HEADERS, body=_BODY, limit=_LIMITS)
def test_random_bytes_as_csv_never_escape_and_cover_every_line(
    header: bytes, body: bytes, limit: int
) -> None:
    """Any CSV body: records in order from the first non-blank line; without quotes or CR
    (so no record can span lines) each non-blank line is exactly one record."""
    data = header + body
    out = _read_all(data, "csv", limit)
    assert out is not None, "a valid header is never refused"
    starts = _expected_records(data, limit, first=2, blank=b"\r\n")
    if not starts:
        assert out == []
        return
    assert out[0].line == starts[0]
    assert out[-1].line <= starts[-1]
    if b'"' not in body and b"\r" not in body:
        assert [item.line for item in out] == starts


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_BODY, fmt=st.sampled_from(["csv", "jsonl"]))
def test_random_whole_files_are_refused_or_read(data: bytes, fmt: str) -> None:
    """Any bytes as a whole file (header included): ManifestError at open or records."""
    _read_all(data, fmt, 1024)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header=_HEADERS, body=_BODY, cut=st.floats(0.0, 1.0), fmt=st.sampled_from(["csv", "jsonl"]))
def test_random_cut_gzip_ends_in_unreadable_not_an_exception(
    header: bytes, body: bytes, cut: float, fmt: str
) -> None:
    """A gzip of any bytes, cut anywhere: records, then at most one unreadable, never a raise."""
    packed = gzip.compress((header if fmt == "csv" else b"") + body, mtime=0)
    out = _read_all(packed[: int(len(packed) * cut)], fmt, 1024)
    if out:
        assert all(item.error != "unreadable" for item in out[:-1] if isinstance(item, RowError))
