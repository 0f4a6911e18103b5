"""Hostile manifests, continued: whole files, gzip and JSONL; ``corpus()`` lists them all.

The expected outcomes follow the decisions in hostile_corpus.py's docstring.
"""

from __future__ import annotations

import gzip
import zlib

import orjson

from .hostile_corpus import (
    CONFUSABLE_IDS,
    FORMULAS,
    ROW_LIMIT,
    Builder,
    Case,
    Created,
    Failed,
    confusable_campaign_ids,
    csv_bom_crlf,
    csv_invalid_utf8,
    csv_malformed,
    csv_many_columns,
    csv_mixed_line_endings,
    csv_nul_and_controls,
    csv_wrong_columns,
    formula_strings,
    long_line,
    record,
    send_ids,
    too_long_values,
    unbalanced_quote,
)

# --- whole-file cases -------------------------------------------------------------------


def whole_file_cases() -> list[Case]:
    """Files with nothing to do (exit 0) and files refused before sending (exit 2)."""
    return [
        Case("csv_header_only", ".csv", b"campaign_id,send_id\n"),
        Case("csv_header_only_no_line_end", ".csv", b"campaign_id,send_id"),
        Case("csv_header_only_bom_crlf", ".csv", b"\xef\xbb\xbfcampaign_id\r\n\r\n"),
        Case("jsonl_empty", ".jsonl", b""),
        Case("jsonl_blank_lines", ".jsonl", b"\n  \r\n\t\n"),
        Case("jsonl_gz_empty", ".jsonl.gz", gzip.compress(b"", mtime=0)),
        Case("csv_empty", ".csv", b"", refused="is empty"),
        Case("csv_blank_lines", ".csv", b"\n\r\n\n", refused="is empty"),
        Case("csv_gz_empty", ".csv.gz", gzip.compress(b"", mtime=0), refused="is empty"),
        Case("csv_no_campaign_id", ".csv", b"campaign,send_id\nc,s\n", refused="campaign_id"),
        Case(
            "csv_double_bom",
            ".csv",
            b"\xef\xbb\xbf\xef\xbb\xbfcampaign_id\nc\n",
            refused="rename it to exactly 'campaign_id'",
        ),
        Case(
            "csv_spaced_header",
            ".csv",
            b" campaign_id ,send_id\nc,s\n",
            refused="rename it to exactly 'campaign_id'",
        ),
        Case(
            "csv_header_name_with_line_break",
            ".csv",
            b'"note\nmore",send_id\nc,s\n',
            refused="(it has: note\\nmore, send_id)",
        ),
        Case("csv_latin1_header", ".csv", b"campaign_id,n\xe9\nc,s\n", refused="not valid UTF-8"),
        Case("csv_utf16", ".csv", "campaign_id\nc\n".encode("utf-16"), refused="UTF-16"),
        Case("csv_cr_only", ".csv", b"campaign_id,send_id\rc,s\r", refused="not valid CSV"),
        Case(
            "csv_duplicate_header",
            ".csv",
            b"campaign_id,note,note\nc,a,b\n",
            refused="'note' twice",
        ),
        Case(
            "csv_header_too_long",
            ".csv",
            b"campaign_id," + b"h" * (ROW_LIMIT + 10) + b"\nc,s\n",
            refused="header is longer than max_row_bytes",
        ),
        Case(
            "jsonl_first_object_without_campaign_id",
            ".jsonl",
            b'{"campaign":"c"}\n{"campaign_id":"d"}\n',
            refused="no campaign_id key",
        ),
        Case(
            "gzip_header_cut",
            ".csv.gz",
            gzip.compress(b"campaign_id\nc\n", mtime=0)[:6],
            refused="cannot be read",
        ),
        Case("gzip_not_gzip", ".csv.gz", b"\x1f\x8bthis is not gzip", refused="cannot be read"),
    ]


# --- gzip -------------------------------------------------------------------------------


def truncated_gzip(fmt: str = "csv") -> Case:
    """A .gz cut at 60%: the complete rows before the cut are sent, then `unreadable`."""
    if fmt == "csv":
        body = b"campaign_id,send_id\n" + b"".join(b"g%05d,s%05d\n" % (i, i) for i in range(400))
    else:
        body = b"".join(b'{"campaign_id":"g%05d","send_id":"s%05d"}\n' % (i, i) for i in range(400))
    packed = gzip.compress(body, mtime=0)
    cut = packed[: len(packed) * 6 // 10]
    # What zlib can decode from the cut stream: the reader yields its complete lines.
    decoded = zlib.decompressobj(wbits=31).decompress(cut)
    complete = decoded[: decoded.rfind(b"\n") + 1].splitlines()
    b = Builder()
    if fmt == "csv":
        b.raw(complete.pop(0) + b"\n")
    for line in complete:
        if fmt == "csv":
            cid, sid = line.split(b",")
        else:
            doc = orjson.loads(line)
            cid, sid = doc["campaign_id"].encode(), doc["send_id"].encode()
        b.good(line + b"\n", cid, sid)
    b.failed.append(Failed(b.line, "unreadable"))
    return Case(
        f"{fmt}_gzip_truncated",
        f".{fmt}.gz",
        cut,
        tuple(b.created),
        tuple(b.failed),
    )


def gzip_trailing_garbage() -> Case:
    """Valid gzip followed by junk: every row is sent, then `unreadable` for the junk."""
    rows = [(f"t{i}", f"s{i}") for i in range(5)]
    body = b"campaign_id,send_id\n" + b"".join(record(c, s) for c, s in rows)
    return Case(
        "csv_gzip_trailing_garbage",
        ".csv.gz",
        gzip.compress(body, mtime=0) + b"garbage after the stream",
        tuple(Created(i + 2, c, s) for i, (c, s) in enumerate(rows)),
        (Failed(len(rows) + 2, "unreadable"),),
    )


def gzip_hostile_values() -> Case:
    """The confusable ids, gzip-compressed with a BOM and CRLF: byte-exact still."""
    plain = confusable_campaign_ids()
    data = b"\xef\xbb\xbf" + plain.data.replace(b"\n", b"\r\n")
    return Case(
        "csv_gzip_confusables_bom_crlf",
        ".csv.gz",
        gzip.compress(data, mtime=0),
        plain.created,
        plain.failed,
    )


# --- JSONL ------------------------------------------------------------------------------


def jsonl_malformed() -> Case:
    """Broken JSON of many kinds, between good objects."""
    b = Builder()
    b.good(b'{"campaign_id":"j-ok-1","send_id":"s1"}\n', "j-ok-1", "s1")
    for bad in (
        b'{"campaign_id":"c",}\n',  # trailing comma
        b"{'campaign_id':'c'}\n",  # single quotes
        b'{campaign_id:"c"}\n',  # unquoted key
        b'{"campaign_id":NaN}\n',
        b'{"campaign_id":1e400}\n',  # infinity
        b'{"campaign_id":"c"} // comment\n',
        b'{"campaign_id":"c"}{"campaign_id":"d"}\n',  # two objects
        b'{"campaign_id":"c"\n',  # truncated
        b"{\n",
        b"}\n",
        b'{"campaign_id":"\\ud800"}\n',  # a lone surrogate escape
        b'{"campaign_id":"bad\\x41"}\n',  # an escape JSON does not have
        b'{"campaign_id":"c\x01"}\n',  # a raw control character in a string
        b'{"campaign_id":"c\x00"}\n',  # a raw NUL
        b'{"campaign_id":"c"}\r{"campaign_id":"d"}\n',  # a lone CR joins two objects
        b'\xef\xbb\xbf{"campaign_id":"c"}\n',  # a BOM not at the file's start
        b"[" * 5000 + b"]" * 5000 + b"\n",  # nested past the parser's depth
        b'{"campaign_id":"first","campaign_id":"=second"}\n',  # ambiguous
        b'{"campaign_id":"c","send_id":"a","send\\u005fid":"b"}\n',  # the same, escaped
        b"\x00\n",
    ):
        b.bad(bad, "malformed_json")
    b.good(b'{"campaign_id":"j-ok-2"}\n', "j-ok-2", None)
    return b.case("jsonl_malformed", ".jsonl")


def jsonl_not_objects() -> Case:
    """Valid JSON that is not an object: refused line by line."""
    b = Builder()
    b.good(b'{"campaign_id":"n-ok-1","send_id":"s1"}\n', "n-ok-1", "s1")
    for value in (
        b"[1]",
        b'"text"',
        b"42",
        b"-1.5e300",
        b"null",
        b"true",
        b"false",
        b"[]",
        b'[{"campaign_id":"x"}]',
        b'""',
    ):
        b.bad(value + b"\n", "not_an_object")
    b.good(b'{"campaign_id":"n-ok-2","send_id":"s2"}\n', "n-ok-2", "s2")
    return b.case("jsonl_not_objects", ".jsonl")


def jsonl_wrong_types() -> Case:
    """Objects whose ids are of the wrong type, missing or empty."""
    b = Builder()
    for doc, error, fld in (
        (b'{"campaign_id":42}', "wrong_type", "campaign_id"),
        (b'{"campaign_id":null}', "wrong_type", "campaign_id"),
        (b'{"campaign_id":["c"]}', "wrong_type", "campaign_id"),
        (b'{"campaign_id":{"id":"c"}}', "wrong_type", "campaign_id"),
        (b'{"campaign_id":true}', "wrong_type", "campaign_id"),
        (b'{"campaign_id":"c","send_id":7}', "wrong_type", "send_id"),
        (b'{"campaign_id":"c","send_id":["s"]}', "wrong_type", "send_id"),
        (b'{"campaign_id":"c","workspace":5}', "wrong_type", "workspace"),
        (b"{}", "missing_field", "campaign_id"),
        (b'{"send_id":"s"}', "missing_field", "campaign_id"),
        (b'{"campaign_id":""}', "empty_field", "campaign_id"),
        (b'{"campaign_id":"c\\u0000"}', "control_character", "campaign_id"),
        (b'{"campaign_id":"c","send_id":"caf\\u00e9"}', "not_ascii", "send_id"),
    ):
        b.bad(doc + b"\n", error, fld)
    b.good(b'{"campaign_id":"t-ok","send_id":null}\n', "t-ok", None)
    b.good(b'{"campaign_id":"t-ok-2","send_id":""}\n', "t-ok-2", None)
    return b.case("jsonl_wrong_types", ".jsonl")


def jsonl_encodings() -> Case:
    """Invalid UTF-8 is refused; escaped and raw forms of the same text arrive identical."""
    b = Builder()
    b.bad(b'{"campaign_id":"c\xff"}\n', "invalid_utf8")
    b.bad(b'{"campaign_id":"c\xc0\xaf"}\n', "invalid_utf8")
    b.bad(b'{"campaign_id":"c\xed\xa0\x80"}\n', "invalid_utf8")
    b.bad(b'{"campaign_id":"c","note":"\xe9"}\n', "invalid_utf8")
    for i, cid in enumerate(CONFUSABLE_IDS):
        b.good(orjson.dumps({"campaign_id": cid, "send_id": f"r{i}"}) + b"\n", cid, f"r{i}")
    # The same ids written with \u escapes (as Python's json.dumps does by default).
    for i, cid in enumerate(CONFUSABLE_IDS[:6]):
        escaped = cid.encode("ascii", "backslashreplace").replace(b"\\x", b"\\u00")
        b.good(b'{"campaign_id":"%s","send_id":"e%d"}\n' % (escaped, i), cid, f"e{i}")
    b.good(b'{"campaign_id":"\\ud835\\udd20-pair","send_id":"p"}\n', "\U0001d520-pair", "p")
    for i, formula in enumerate(FORMULAS):
        b.good(orjson.dumps({"campaign_id": formula, "send_id": f"=f{i}"}) + b"\n",
               formula, f"=f{i}")  # fmt: skip
    return b.case("jsonl_encodings_and_formulas", ".jsonl")


def jsonl_long_line(size: int) -> Case:
    """A ``size``-byte JSONL line over max_row_bytes; the next objects are still sent."""
    b = Builder()
    b.good(b'{"campaign_id":"l-before"}\n', "l-before", None)
    b.bad(b'{"campaign_id":"' + b"x" * size + b'"}\n', "line_too_long")
    b.good(b'{"campaign_id":"l-after","send_id":"s"}\n', "l-after", "s")
    return b.case("jsonl_long_line", ".jsonl")


def corpus() -> list[Case]:
    """Every hostile case of the default suite (the 50 MB line is ``long_line(50 MB)``)."""
    return [
        csv_malformed(),
        csv_wrong_columns(),
        csv_invalid_utf8(),
        csv_nul_and_controls(),
        csv_bom_crlf(),
        csv_mixed_line_endings(),
        csv_many_columns(),
        send_ids(),
        confusable_campaign_ids(),
        formula_strings(),
        long_line(3 * 1024 * 1024, name="csv_long_line_3mb"),
        too_long_values(),
        unbalanced_quote(50, 10),
        unbalanced_quote(120, 10_000),
        truncated_gzip("csv"),
        truncated_gzip("jsonl"),
        gzip_trailing_garbage(),
        gzip_hostile_values(),
        jsonl_malformed(),
        jsonl_not_objects(),
        jsonl_wrong_types(),
        jsonl_encodings(),
        jsonl_long_line(3 * 1024 * 1024),
        *whole_file_cases(),
    ]
