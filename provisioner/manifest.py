"""Streaming manifest reader: CSV or JSONL, optionally gzip-compressed, from a file or stdin.

``Manifest`` is a context manager. ``__enter__`` opens the input and checks it as a whole
(readable, has a ``campaign_id`` column/key, no duplicate header names) so that a broken
manifest is refused before any request is sent. Iterating then yields one ``RawRow`` per
record, or a ``RowError`` for a record that cannot be parsed; a bad record never raises.

Lines are *physical* lines: the input is split on LF only (CRLF ends with LF), so a line
number is what ``sed -n Np``, ``wc -l`` and editors show. A lone CR is data, not a line
break: inside a quoted CSV field it is kept; in an unquoted field it is a ``malformed_csv``
record. Memory stays constant whatever the length of the manifest: rows are never
collected, and the JSONL look-ahead done at open is bounded.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import os
import re
import stat
import sys
import zlib
from collections.abc import Iterator
from types import TracebackType
from typing import Any, BinaryIO, Literal, cast

import orjson

from provisioner.errors import ManifestError
from provisioner.models import CAMPAIGN_ID, SEND_ID, Columns, RawRow, RowError

Format = Literal["csv", "jsonl"]

_SUFFIXES: tuple[tuple[str, Format], ...] = (
    (".csv", "csv"),
    (".jsonl", "jsonl"),
    (".ndjson", "jsonl"),
)
_GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"
#: Fields this long are parsed whole (validation rejects them with a readable message); the
#: bound exists because an unbalanced quote turns the rest of a file into one field, and an
#: unbounded field would then grow memory with the file (the parser holds 4 bytes/char).
FIELD_SIZE_LIMIT = 64 * 1024 * 1024
csv.field_size_limit(FIELD_SIZE_LIMIT)
#: How far the JSONL open-time check looks for a first object before giving up on it
#: (records after that are still checked one by one by validation).
_PEEK_MAX_LINES = 1000
_PEEK_MAX_BYTES = 64 * 1024 * 1024
_READ_ERRORS = (OSError, EOFError, zlib.error)
#: orjson reports "line 1 column 5 (char 4)"; in JSONL the line is ours, only the column helps.
_JSON_POSITION = re.compile(r":? ?line \d+ column (\d+) \(char \d+\)")


def detect_format(path: str, explicit: str | None) -> tuple[Format, bool]:
    """Return ``(format, gzipped)`` for ``path``.

    The format comes from ``explicit`` ("csv"/"jsonl") or else from the suffix (.csv, .jsonl,
    .ndjson, each optionally followed by .gz). Compression comes from a .gz suffix or from
    the gzip magic bytes at the start of a regular file. Stdin ("-") needs ``explicit``; its
    compression (like a pipe's) is sniffed when it is opened, so it is reported here as False.
    """
    fmt = _format_of(path, explicit)
    gzipped = path != "-" and path.lower().endswith(".gz")
    if path != "-" and not gzipped:
        # Only a regular file is sniffed here: reading a pipe (e.g. bash's <(zcat m.gz))
        # would consume bytes the Manifest then never sees.
        with contextlib.suppress(OSError):
            if stat.S_ISREG(os.stat(path).st_mode):
                with open(path, "rb") as probe:
                    gzipped = probe.read(2) == _GZIP_MAGIC
    return fmt, gzipped


def _format_of(path: str, explicit: str | None) -> Format:
    """The manifest format from ``explicit`` or the file name; ManifestError if unknown."""
    if explicit in ("csv", "jsonl"):
        return cast(Format, explicit)
    if explicit is not None:
        raise ManifestError(f"unknown manifest format {explicit!r}: use --format csv or jsonl")
    if path == "-":
        raise ManifestError(
            "reading the manifest from stdin ('-') needs its format: "
            "pass --format csv or --format jsonl"
        )
    name = path.lower().removesuffix(".gz")
    for suffix, fmt in _SUFFIXES:
        if name.endswith(suffix):
            return fmt
    raise ManifestError(
        f"{path}: cannot tell the manifest format from the file name; name it .csv, "
        ".jsonl or .ndjson (optionally + .gz), or pass --format csv|jsonl"
    )


class _Prefixed(io.RawIOBase):
    """A non-seekable stream with bytes already read from it put back in front."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head = head
        self._read = getattr(rest, "read1", rest.read)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        # read1 returns what is available; read(n) would block for n bytes and, on a pipe
        # that then fails, drop the bytes it had already collected.
        data = self._read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _Lines:
    """Physical lines of a binary stream, split on LF, counted from 1; BOM removed.

    A read failure (truncated gzip, I/O error) never raises out of here: it is recorded in
    ``failure`` and iteration stops, so the caller can report it as one row error.
    """

    def __init__(self, stream: BinaryIO, *, confirm_eof: bool) -> None:
        self._stream = stream
        # gzip hands out the data it decoded before noticing a truncation; a last line
        # without LF is only trusted once a further read proves the stream ended cleanly.
        self._confirm_eof = confirm_eof
        self.number = 0
        self.failure: str | None = None
        self._first = True

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> bytes:
        if self.failure is not None:
            raise StopIteration
        try:
            line = self._stream.readline()
            if self._confirm_eof and line and not line.endswith(b"\n"):
                self._stream.readline()
        except _READ_ERRORS as exc:
            self.failure = str(exc) or type(exc).__name__
            raise StopIteration from None
        if not line:
            raise StopIteration
        self.number += 1
        if self._first:
            self._first = False
            if line.startswith(_BOM):
                line = line[3:]
        return line


def _sanitize(value: str) -> str:
    """Undecodable bytes (surrogate-escaped) as visible ``\\xNN`` text, safe to encode."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _first_bad_byte(values: list[str], names: tuple[str, ...]) -> str:
    """Describe where the first undecodable byte of a record is, for a person."""
    for index, value in enumerate(values):
        for pos, char in enumerate(value):
            if "\udc80" <= char <= "\udcff":
                name = names[index] if index < len(names) else f"column {index + 1}"
                return f"{name} has byte 0x{ord(char) - 0xDC00:02X} at character {pos + 1}"
    return "the record has an undecodable byte"


def _ids(columns: Columns) -> dict[str, Any]:
    """The RowError fields a malformed record still offers: its columns and string ids."""
    found = dict(columns)
    campaign_id, send_id = found.get(CAMPAIGN_ID), found.get(SEND_ID)
    return {
        "columns": columns,
        "campaign_id": campaign_id if isinstance(campaign_id, str) else None,
        "send_id": send_id if isinstance(send_id, str) else None,
    }


def _hint(names: list[str]) -> str:
    """Point at a near miss of ``campaign_id`` (case, spaces, dashes), if there is one."""
    for name in names:
        if name.strip().lower().replace("-", "_").replace(" ", "_") == CAMPAIGN_ID:
            return f" (found {name!r}: rename it to exactly 'campaign_id')"
    return ""


class Manifest:
    """A manifest opened for streaming; use as ``with Manifest(path) as m: for r in m``."""

    def __init__(self, path: str, fmt: str | None = None, *, stdin: BinaryIO | None = None) -> None:
        """Prepare to read ``path`` ("-" reads ``stdin``, default ``sys.stdin.buffer``)."""
        self.path = path
        self.display_name = "<stdin>" if path == "-" else path
        self.header: tuple[str, ...] | None = None
        self.format: Format | None = None
        self.gzipped = False
        self._explicit = fmt
        self._stdin = stdin
        self._closers: list[io.IOBase | BinaryIO] = []
        self._lines: _Lines | None = None
        self._reader: Iterator[list[str]] = iter(())
        self._peeked: list[bytes] = []
        self._bad_utf8 = False
        self._started = False

    def __enter__(self) -> Manifest:
        """Open the manifest and check it as a whole; raise ManifestError if it is unusable."""
        self.format = _format_of(self.path, self._explicit)
        try:
            stream = self._open()
            self._lines = _Lines(stream, confirm_eof=self.gzipped)
            if self.format == "csv":
                self._check_csv_header()
            else:
                self._peek_jsonl()
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

    def _close(self) -> None:
        for closer in reversed(self._closers):
            with contextlib.suppress(Exception):
                closer.close()
        self._closers.clear()

    def _open(self) -> BinaryIO:
        """Open the input, detect gzip by its magic bytes, return a binary line source."""
        name = self.display_name
        source: BinaryIO
        if self.path == "-":
            source = self._stdin if self._stdin is not None else sys.stdin.buffer
        else:
            try:
                source = open(self.path, "rb", buffering=1 << 16)  # noqa: SIM115 (see _close)
            except IsADirectoryError:
                raise ManifestError(
                    f"{name} is a folder, not a manifest: pass the path of a .csv or .jsonl file"
                ) from None
            except OSError as exc:
                raise ManifestError(
                    f"cannot open the manifest {name}: {exc.strerror or exc}; "
                    "check the path and its permissions"
                ) from None
            self._closers.append(source)
        try:
            if source.seekable():
                start = source.tell()
                head = source.read(2)
                source.seek(start)
            else:
                # A pipe cannot seek: put the sniffed bytes back in front instead.
                head = source.read(2)
                source = cast(BinaryIO, io.BufferedReader(_Prefixed(head, source), 1 << 16))
        except OSError as exc:
            raise ManifestError(f"{name}: cannot read: {exc.strerror or exc}") from None
        self.gzipped = head == _GZIP_MAGIC
        if not self.gzipped:
            return source
        unzipped = gzip.GzipFile(fileobj=source, mode="rb")
        self._closers.append(unzipped)
        return cast(BinaryIO, unzipped)

    def _fail_open(self, what: str, fix: str) -> ManifestError:
        return ManifestError(f"{self.display_name}: {what}; {fix}")

    def _check_csv_header(self) -> None:
        """Read the header record now, so a manifest without campaign_id sends nothing."""
        assert self._lines is not None
        self._reader = csv.reader(self._decoded(self._lines), strict=True)
        record: list[str] = []
        while not record:
            line = self._lines.number + 1
            try:
                record = next(self._reader)
            except StopIteration:
                if self._lines.failure is not None:
                    raise self._fail_open(
                        f"cannot be read ({self._lines.failure})", "check or re-copy the file"
                    ) from None
                raise self._fail_open(
                    "is empty (no header line)",
                    "the first line must name the columns, e.g. campaign_id,send_id",
                ) from None
            except csv.Error as exc:
                raise self._fail_open(
                    f"line {line}: the header is not valid CSV ({exc})",
                    "fix its quoting (files with CR-only line endings must be converted to LF)",
                ) from None
        if self._lines.failure is not None:
            raise self._fail_open(
                f"cannot be read ({self._lines.failure})", "check or re-copy the file"
            )
        if self._bad_utf8:
            utf16 = record[0].startswith(("\udcff\udcfe", "\udcfe\udcff"))
            raise self._fail_open(
                f"line {line}: the header is not UTF-8 text" + (" (it looks like UTF-16)" * utf16),
                "save the file as UTF-8",
            )
        if CAMPAIGN_ID not in record:
            raise self._fail_open(
                f"line {line}: the header has no campaign_id column{_hint(record)}",
                f"the header must name a campaign_id column (it has: {', '.join(record)[:200]})",
            )
        seen: dict[str, int] = {}
        for index, name in enumerate(record, 1):
            if name in seen:
                raise self._fail_open(
                    f"line {line}: the header names column {name!r} twice "
                    f"(columns {seen[name]} and {index})",
                    "give every column a distinct name",
                )
            seen[name] = index
        self.header = tuple(record)

    def _decoded(self, lines: _Lines) -> Iterator[str]:
        """Decode lines for the csv module, flagging any that is not valid UTF-8."""
        for raw in lines:
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                # Keep the bytes (as surrogates) so the record still parses; the flag turns
                # the record into an invalid_utf8 row error.
                self._bad_utf8 = True
                yield raw.decode("utf-8", "surrogateescape")

    def _peek_jsonl(self) -> None:
        """Buffer lines up to the first JSON object and check that it has campaign_id."""
        assert self._lines is not None
        size = 0
        for raw in self._lines:
            self._peeked.append(raw)
            size += len(raw)
            if raw.isspace():
                continue
            try:
                value = orjson.loads(raw)
            except orjson.JSONDecodeError:
                value = None
            if isinstance(value, dict):
                if CAMPAIGN_ID not in value:
                    keys = [str(k) for k in value]
                    raise self._fail_open(
                        f"line {self._lines.number}: the first record has no campaign_id key"
                        f"{_hint(keys)}",
                        f"every record needs one (it has: {', '.join(keys)[:200]})",
                    )
                return
            if len(self._peeked) >= _PEEK_MAX_LINES or size >= _PEEK_MAX_BYTES:
                return
        if self._lines.failure is not None and not self._peeked:
            raise self._fail_open(
                f"cannot be read ({self._lines.failure})", "check or re-copy the file"
            )

    def __iter__(self) -> Iterator[RawRow | RowError]:
        """Yield each record in file order; a record that cannot be parsed is a RowError."""
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

    def _csv_rows(self) -> Iterator[RawRow | RowError]:
        lines, reader, header = self._lines, self._reader, self.header
        assert lines is not None
        assert header is not None
        width = len(header)
        while True:
            start = lines.number + 1
            self._bad_utf8 = False
            try:
                values = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                if lines.failure is not None:
                    break  # the read failed inside a quoted field
                yield self._malformed_csv(start, str(exc))
                continue
            if lines.failure is not None:
                break  # the read failed inside this record: what was returned is a fragment
            if not values:
                continue  # a blank line
            if self._bad_utf8:
                yield RowError(
                    line=start,
                    error="invalid_utf8",
                    message=(
                        f"line {start} is not valid UTF-8: {_first_bad_byte(values, header)}; "
                        "save the manifest as UTF-8"
                    ),
                    **_ids(tuple(zip(header, map(_sanitize, values), strict=False))),
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
                    **_ids(tuple(zip(header, values, strict=False))),
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

    def _jsonl_rows(self) -> Iterator[RawRow | RowError]:
        lines = self._lines
        assert lines is not None
        number = 0
        for raw in _chain(self._peeked, lines):
            number += 1
            if raw.isspace():
                continue  # a blank line
            try:
                value = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                yield self._bad_json(number, raw, str(exc))
                continue
            if not isinstance(value, dict):
                yield RowError(
                    line=number,
                    error="not_an_object",
                    message=(
                        f"line {number} is a JSON {_json_kind(value)}, not an object: each "
                        'line must be one object such as {"campaign_id": "..."}'
                    ),
                )
                continue
            yield RawRow(number, tuple(value.items()))
        if lines.failure is not None:
            yield self._unreadable(number + 1)

    @staticmethod
    def _bad_json(line: int, raw: bytes, reason: str) -> RowError:
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


def _chain(first: list[bytes], rest: Iterator[bytes]) -> Iterator[bytes]:
    """The look-ahead lines, then the remaining lines (keeps the look-ahead list short-lived)."""
    yield from first
    first.clear()
    yield from rest


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return "number"
