"""Streaming manifest reader: CSV or JSONL, optionally gzip-compressed, from a file or stdin.

``Manifest`` is a context manager. ``__enter__`` opens the input and checks it as a whole
(readable, has a ``campaign_id`` column/key, no duplicate header names) so that a broken
manifest is refused before any request is sent. Iterating then yields one ``RawRow`` per
record, or a ``RowError`` for a record that cannot be parsed; a bad record never raises.

Lines are *physical* lines (``lines.Lines``): the input is split on LF only (CRLF
ends with LF), so a line number is what ``sed -n Np``, ``wc -l`` and editors show. A lone
CR is data, not a line break: inside a quoted CSV field it is kept; in an unquoted field it
is a ``malformed_csv`` record. Memory stays constant whatever the length of the manifest or
of one line: rows are never collected, a record over ``max_row_bytes`` is skipped unparsed
(``line_too_long``), and the JSONL look-ahead done at open is bounded.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import os
import stat
import sys
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, BinaryIO, cast

import orjson

from provisioner._core.models import CAMPAIGN_ID, RawRow, RowError
from provisioner._manifest.columns import hint, near_miss, near_miss_fix
from provisioner._manifest.lines import (
    DEFAULT_MAX_ROW_BYTES,
    READ_ERRORS,
    Decoded,
    Format,
    Lines,
    NotUtf8,
    Transcoded,
    chain_lines,
    detect_format,
    first_bad_byte,
    format_of,
    one_line,
    open_source,
    sanitize,
    scan_utf8,
    show_head,
    too_long_error,
)
from provisioner._manifest.records import (
    IDLE,
    IDLE_AFTER_BLANKS,
    Idle,
    blank,
    jsonl_rows,
    row_ids,
)
from provisioner._manifest.rules import clip_text
from provisioner.errors import LineTooLong, ManifestError

__all__ = [
    "DEFAULT_MAX_ROW_BYTES",
    "FIELD_SIZE_LIMIT",
    "Format",
    "Manifest",
    "detect_format",
]
#: Fields this long are parsed whole (validation rejects them with a readable message); the
#: bound exists because an unbalanced quote turns the rest of a file into one field, and an
#: unbounded field would then grow memory with the file (the parser holds 4 bytes/char).
#: ``max_row_bytes`` (at most this much) normally stops such a record first.
FIELD_SIZE_LIMIT = 64 * 1024 * 1024
csv.field_size_limit(FIELD_SIZE_LIMIT)
#: How far the JSONL open-time check looks for a first object before giving up on it
#: (records after that are still checked one by one by validation).
_PEEK_MAX_LINES = 1000
_PEEK_MAX_BYTES = 16 * 1024 * 1024

if TYPE_CHECKING:
    from provisioner._config.settings import Settings


def manifest_for(settings: Settings) -> Manifest:
    """The manifest ``settings`` name, read as they say (format, bounds, column mapping,
    encoding, delimiter): the one way ``run`` and ``validate`` open it, so they agree."""
    return Manifest(
        settings.manifest,
        settings.manifest_format,
        max_row_bytes=settings.max_row_bytes,
        columns=dict(settings.columns),
        encoding=settings.manifest_encoding,
        delimiter=settings.csv_delimiter,
    )


class Manifest:
    """A manifest opened for streaming; use as ``with Manifest(path) as m: for r in m``."""

    def __init__(
        self,
        path: str,
        fmt: str | None = None,
        *,
        stdin: BinaryIO | None = None,
        max_row_bytes: int = DEFAULT_MAX_ROW_BYTES,
        columns: Mapping[str, str] | None = None,
        encoding: str | None = None,
        delimiter: str = ",",
    ) -> None:
        """Prepare to read ``path`` ("-" reads ``stdin``, default ``sys.stdin.buffer``);
        a record longer than ``max_row_bytes`` is a ``line_too_long`` row error.
        ``columns`` maps a known column (campaign_id, send_id, workspace) to the header
        name or JSON key that holds it in this file (``--column send_id="Send ID"``).
        ``encoding`` (``--encoding``) decodes a file that is not UTF-8; without it a regular
        file is scanned whole at open and refused if it is not UTF-8. ``delimiter``
        separates CSV fields."""
        self.encoding = encoding
        self.delimiter = delimiter
        self.path = path
        self.display_name = "<stdin>" if path == "-" else path
        self.header: tuple[str, ...] | None = None
        self.format: Format | None = None
        self.gzipped = False
        self.max_row_bytes = max_row_bytes
        # source name -> known column
        self._rename = {source: column for column, source in (columns or {}).items()}
        self._explicit = fmt
        self._stdin = stdin
        self._closers: list[io.IOBase | BinaryIO] = []
        self._lines: Lines | None = None
        self._text: Decoded | None = None
        self._reader: Iterator[list[str]] = iter(())
        self._peeked: list[bytes | LineTooLong] = []
        self._started = False
        self._idle = False

    def __enter__(self) -> Manifest:
        """Open the manifest and check it as a whole; raise ManifestError if it is unusable."""
        self.format = format_of(self.path, self._explicit)
        try:
            stream, self.gzipped = open_source(
                self.path, self.display_name, self._stdin, self._closers
            )
            if self.encoding is not None:
                stream = cast(BinaryIO, io.BufferedReader(Transcoded(stream, self.encoding)))
            else:
                self._refuse_invalid_utf8()
            self._lines = Lines(stream, confirm_eof=self.gzipped, max_row_bytes=self.max_row_bytes)
            if self.format == "csv":
                self._check_csv_header()
            else:
                self._peek_jsonl()
        except NotUtf8 as exc:
            self._close()
            raise ManifestError(one_line(f"{self.display_name}: {exc}")) from None
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close what was opened (never the caller's stdin)."""
        self._close()

    def _refuse_invalid_utf8(self) -> None:
        """Scan a regular file whole for a byte that is not UTF-8 (standard input and pipes
        cannot be read twice: there such a row is an ``invalid_utf8`` row error)."""
        try:
            if self.path == "-" or not stat.S_ISREG(os.stat(self.path).st_mode):
                return
            with open(self.path, "rb") as raw:
                source: BinaryIO = raw
                if self.gzipped:
                    source = cast(BinaryIO, gzip.GzipFile(fileobj=raw, mode="rb"))
                bad = scan_utf8(source)
        except READ_ERRORS:
            return  # the reading proper reports it, with the rows before the damage
        if bad is not None:
            line, at, byte = bad
            raise NotUtf8(
                f"line {line} is not valid UTF-8 (byte 0x{byte:02X} at byte {at} of the "
                "line), so nothing was sent; re-save the file as UTF-8, or pass its encoding "
                "with --encoding (e.g. --encoding cp1252 for a Windows export)"
            )

    def fraction_read(self) -> float | None:
        """How far through the file the reader is, by bytes (compressed bytes for .gz);
        None for standard input. Used for the progress events' ETA."""
        if self.path == "-" or not self._closers:
            return None
        raw = self._closers[0]
        try:
            size = os.fstat(raw.fileno()).st_size
            position = raw.tell()
        except (OSError, ValueError):
            return None
        return min(1.0, position / size) if size else None

    def lines(self) -> Lines:
        """The open manifest's lines: ``bytes_read`` says how far the reader is (the feed
        bounds its chunks by bytes with it)."""
        if self._lines is None:
            raise RuntimeError("the manifest is not open: use it inside its `with` block")
        return self._lines

    def source_fileno(self) -> int | None:
        """The file descriptor the manifest is read from, or None (an in-memory stream)."""
        source: object = self._closers[0] if self._closers else None
        if self.path == "-":
            source = self._stdin if self._stdin is not None else sys.stdin.buffer
        fileno = getattr(source, "fileno", None)
        if fileno is None:
            return None
        try:
            return int(fileno())
        except (OSError, ValueError):  # io.UnsupportedOperation (BytesIO) is an OSError
            return None

    def detach(self) -> None:
        """Forget the open files without closing them: a thread blocked reading one holds
        its lock, and closing would wait for that thread. The process exit closes them."""
        self._closers.clear()

    def _close(self) -> None:
        for closer in reversed(self._closers):
            with contextlib.suppress(Exception):
                closer.close()
        self._closers.clear()

    def _fail_open(self, what: str, fix: str) -> ManifestError:
        # One line whatever the file holds: header names are echoed, and a quoted name may
        # hold a line break.
        message = f"{self.display_name}: {what}; {fix}"
        return ManifestError(one_line(message))

    def _unreadable_at_open(self) -> ManifestError:
        assert self._lines is not None
        return self._fail_open(
            f"cannot be read ({self._lines.failure})", "check or re-copy the file"
        )

    def _check_csv_header(self) -> None:
        """Read the header record now, so a manifest without campaign_id sends nothing."""
        assert self._lines is not None
        self._text = Decoded(self._lines)
        self._reader = csv.reader(self._text, strict=True, delimiter=self.delimiter)
        record: list[str] = []
        while not record:
            line = self._lines.number + 1
            self._lines.new_record()  # blank lines before the header are not part of it
            try:
                record = next(self._reader)
            except StopIteration:
                if self._lines.failure is not None:
                    raise self._unreadable_at_open() from None
                raise self._fail_open(
                    "is empty (no header line)",
                    "the first line must name the columns, e.g. campaign_id,send_id",
                ) from None
            except LineTooLong as exc:
                raise self._fail_open(
                    f"line {line}: the header is longer than max_row_bytes "
                    f"({self.max_row_bytes:,} bytes); it starts with {show_head(exc.head)}",
                    "check that this is a manifest, or raise max_row_bytes",
                ) from None
            except csv.Error as exc:
                raise self._fail_open(
                    f"line {line}: the header is not valid CSV ({exc})",
                    "fix its quoting (files with CR-only line endings must be converted to LF)",
                ) from None
        if self._lines.failure is not None:
            raise self._unreadable_at_open()
        if self._text.bad_utf8:
            utf16 = record[0].startswith(("\udcff\udcfe", "\udcfe\udcff"))
            raise self._fail_open(
                f"line {line}: the header is not UTF-8 text" + (" (it looks like UTF-16)" * utf16),
                "save the file as UTF-8",
            )
        record = self._renamed(record, f"line {line}: the header")
        if CAMPAIGN_ID not in record:
            raise self._fail_open(
                f"line {line}: the header has no campaign_id column{hint(record)}"
                f"{self._delimiter_hint(record)}",
                f"the header must name a campaign_id column (it has: {', '.join(record)[:200]})",
            )
        seen: dict[str, int] = {}
        for index, name in enumerate(record, 1):
            if name in seen:
                raise self._fail_open(
                    f"line {line}: the header names column {clip_text(name)!r} twice "
                    f"(columns {seen[name]} and {index})",
                    "give every column a distinct name",
                )
            seen[name] = index
        self._refuse_near_miss(record, f"line {line}: the header")
        self.header = tuple(record)

    def _delimiter_hint(self, record: list[str]) -> str:
        """Suggest --delimiter when the header looks separated by another character."""
        if len(record) != 1:
            return ""
        for char, flag in ((";", "';'"), ("\t", "$'\\t'"), ("|", "'|'")):
            if char in record[0] and char != self.delimiter:
                return (
                    f" (it holds {char!r}: if that separates the columns, pass --delimiter {flag})"
                )
        return ""

    def _renamed(self, names: list[str], where: str, *, header: bool = True) -> list[str]:
        """``names`` with the ``columns`` mapping applied; a mapped name absent from a CSV
        header (a JSONL key may be absent from one record), or a known column present as
        well as the name mapped to it, stops the run."""
        for source, column in self._rename.items():
            if source not in names and header:
                raise self._fail_open(
                    f"{where} has no column {clip_text(source)!r}, which the column "
                    f"mapping names for {column}",
                    f"check --column {column}=... or [manifest] columns against the header "
                    f"(it has: {', '.join(names)[:200]})",
                )
            if column in names and column != source:
                raise self._fail_open(
                    f"{where} has both {column!r} and {clip_text(source)!r}, which the "
                    f"column mapping names for {column}",
                    "drop the mapping or one of the columns",
                )
        return [self._rename.get(name, name) for name in names]

    def _refuse_near_miss(self, names: list[str], where: str) -> None:
        """Stop on a name that reads as a known column but is not it (``Send ID``)."""
        found = near_miss(names)
        if found is not None:
            name, column = found
            raise self._fail_open(
                f"{where} has a column {clip_text(name)!r} that reads as {column!r} but is "
                "not exactly it, so it would be ignored",
                near_miss_fix(clip_text(name), column),
            )

    def _peek_jsonl(self) -> None:
        """Buffer lines up to the first JSON object and check that it has campaign_id."""
        lines = self._lines
        assert lines is not None
        size = 0
        while len(self._peeked) < _PEEK_MAX_LINES and size < _PEEK_MAX_BYTES:
            lines.new_record()
            try:
                raw = next(lines)
            except StopIteration:
                break
            except LineTooLong as exc:
                self._peeked.append(exc)
                continue
            self._peeked.append(raw)
            size += len(raw)
            if blank(raw):
                continue
            try:
                value = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(value, dict):
                where = f"line {lines.number}: the first record"
                keys = self._renamed([str(k) for k in value], where, header=False)
                if CAMPAIGN_ID not in keys:
                    raise self._fail_open(
                        f"{where} has no campaign_id key{hint(keys)}",
                        f"every record needs one (it has: {', '.join(keys)[:200]})",
                    )
                self._refuse_near_miss(keys, where)
                return
        if lines.failure is not None and not self._peeked:
            raise self._unreadable_at_open()

    def __iter__(self) -> Iterator[RawRow | RowError]:
        """Yield each record in file order; a record that cannot be parsed is a RowError."""
        return cast(Iterator[RawRow | RowError], self._records())

    def records(self, *, idle: bool) -> Iterator[RawRow | RowError | Idle]:
        """As ``iter``; with ``idle``, also IDLE after every IDLE_AFTER_BLANKS blank lines."""
        self._idle = idle
        return self._records()

    def _records(self) -> Iterator[RawRow | RowError | Idle]:
        if self._lines is None or self._started:
            raise RuntimeError("a Manifest is iterated once, inside its `with` block")
        self._started = True
        if self.format == "csv":
            return self._csv_rows()
        return self._jsonl_rows()

    def _unreadable(self, line: int) -> RowError:
        assert self._lines is not None
        return RowError(
            line=line,
            error="unreadable",
            message=(
                f"{self.display_name}: the rest of the file, from line {line}, could not be read "
                f"({self._lines.failure}); those rows were not processed: fix or re-copy the "
                "file and run again"
            ),
        )

    def _csv_rows(self) -> Iterator[RawRow | RowError | Idle]:
        lines, text, reader, header = self._lines, self._text, self._reader, self.header
        assert lines is not None
        assert text is not None
        assert header is not None
        width = len(header)
        blanks, idle = 0, self._idle
        while True:
            start = lines.number + 1
            text.bad_utf8 = False
            lines.new_record()
            try:
                values = next(reader)
            except StopIteration:
                break
            except LineTooLong as exc:
                # The reader starts afresh at the next line: one oversized record costs one
                # row, not the rest of the file.
                yield too_long_error(exc, start, self.max_row_bytes)
                continue
            except csv.Error as exc:
                if lines.failure is not None:
                    break  # the read failed inside a quoted field
                yield self._malformed_csv(start, str(exc))
                continue
            if lines.failure is not None:
                break  # the read failed inside this record: what was returned is a fragment
            if not values:  # a blank line
                if idle:
                    blanks += 1
                    if blanks >= IDLE_AFTER_BLANKS:
                        blanks = 0
                        yield IDLE
                continue
            if text.bad_utf8:
                yield RowError(
                    line=start,
                    error="invalid_utf8",
                    message=(
                        f"line {start} is not valid UTF-8: {first_bad_byte(values, header)}; "
                        "save the manifest as UTF-8"
                    ),
                    **row_ids(tuple(zip(header, map(sanitize, values), strict=False))),
                )
                continue
            if len(values) != width:
                got = f"{len(values)} column" + "s" * (len(values) != 1)
                yield RowError(
                    line=start,
                    error="wrong_column_count",
                    message=(
                        f"line {start} has {got}, the header has {width}: quote values that "
                        "contain commas, or add/remove the missing/extra columns"
                    ),
                    **row_ids(tuple(zip(header, values, strict=False))),
                )
                continue
            yield RawRow(start, tuple(zip(header, values, strict=True)))
        if lines.failure is not None:
            yield self._unreadable(start)

    def _malformed_csv(self, line: int, reason: str) -> RowError:
        if "new-line" in reason:
            why = "a carriage return (CR) inside an unquoted field: quote the field or remove it"
        elif "field larger" in reason:
            why = (
                f"a field longer than {FIELD_SIZE_LIMIT} characters, usually an unbalanced "
                'quote: check the quotes from this line on (a literal " inside a quoted '
                'field is written "")'
            )
        elif "end of data" in reason:
            why = 'a quoted field is never closed: add the missing closing quote (")'
        else:
            why = f'{reason}: a quote inside a quoted field must be doubled ("")'
        return RowError(
            line=line, error="malformed_csv", message=f"line {line} is not valid CSV: {why}"
        )

    def _jsonl_rows(self) -> Iterator[RawRow | RowError | Idle]:
        lines = self._lines
        assert lines is not None
        number = yield from jsonl_rows(
            chain_lines(self._peeked, lines),
            max_row_bytes=self.max_row_bytes,
            idle=self._idle,
            rename=self._rename,
        )
        if lines.failure is not None:
            yield self._unreadable(number + 1)
