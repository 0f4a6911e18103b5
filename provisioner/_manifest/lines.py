"""The byte level of a manifest: its format, opening it (file, pipe, gzip) and its lines.

``Lines`` splits a binary stream into *physical* lines on LF only (CRLF ends with LF), so a
line number is what ``sed -n Np``, ``wc -l`` and editors show. It never holds more than
``max_row_bytes`` of one record: a longer line is skipped in small chunks and reported as
``LineTooLong``, so a hostile 50 MB line costs no more memory than a 1 MB one. The
helpers at the end turn lines into what the readers need (text for the csv module, the
``line_too_long`` row error, escaped echoes). ``provisioner.manifest`` builds the CSV and
JSONL readers on top of it.
"""

from __future__ import annotations

import codecs
import contextlib
import gzip
import io
import os
import re
import stat
import sys
import zlib
from collections.abc import Iterator
from typing import BinaryIO, Literal, cast

from provisioner._core.models import RowError
from provisioner.errors import LineTooLong, ManifestError

Format = Literal["csv", "jsonl"]

_SUFFIXES: tuple[tuple[str, Format], ...] = (
    (".csv", "csv"),
    (".jsonl", "jsonl"),
    (".ndjson", "jsonl"),
)
_GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"
#: A record (CSV: all the physical lines of one record; JSONL: one line) longer than this
#: many bytes, line ends included, is a ``line_too_long`` row error. Braze campaign ids have
#: 36 characters and send ids at most 64, so a real row is a few hundred bytes; the bound
#: keeps one runaway line (or an unbalanced quote swallowing the rest of the file) from
#: being parsed whole, which takes ~8 bytes of memory per byte of line.
DEFAULT_MAX_ROW_BYTES = 1024 * 1024
#: How much of an oversized line is read at a time while skipping it.
_SKIP_CHUNK = 64 * 1024
#: How many bytes of an oversized line are kept to show the person where it starts.
_HEAD_BYTES = 60
READ_ERRORS = (OSError, EOFError, zlib.error)
#: Characters that would break the one-line error message (C0/C1 controls, U+2028/9).
_LINE_BREAKING = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def detect_format(path: str, explicit: str | None) -> tuple[Format, bool]:
    """Return ``(format, gzipped)`` for ``path``.

    The format comes from ``explicit`` ("csv"/"jsonl") or else from the suffix (.csv, .jsonl,
    .ndjson, each optionally followed by .gz). Compression comes from a .gz suffix or from
    the gzip magic bytes at the start of a regular file. Stdin ("-") needs ``explicit``; its
    compression (like a pipe's) is sniffed when it is opened, so it is reported here as False.
    """
    fmt = format_of(path, explicit)
    gzipped = path != "-" and path.lower().endswith(".gz")
    if path != "-" and not gzipped:
        # Only a regular file is sniffed here: reading a pipe (e.g. bash's <(zcat m.gz))
        # would consume bytes the Manifest then never sees.
        with contextlib.suppress(OSError):
            if stat.S_ISREG(os.stat(path).st_mode):
                with open(path, "rb") as probe:
                    gzipped = probe.read(2) == _GZIP_MAGIC
    return fmt, gzipped


def format_of(path: str, explicit: str | None) -> Format:
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


def open_source(
    path: str, name: str, stdin: BinaryIO | None, closers: list[io.IOBase | BinaryIO]
) -> tuple[BinaryIO, bool]:
    """Open the input and detect gzip by its magic bytes: ``(binary line source, gzipped)``.

    What must be closed is appended to ``closers`` (never the caller's stdin); the first
    entry, if any, is the file itself (its position measures progress).
    """
    source: BinaryIO
    if path == "-":
        # Not sys.stdin.buffer itself: a pipe may be read by a thread that is still blocked
        # in read() when the process exits, and the interpreter's shutdown would wait for
        # the lock of sys.stdin's buffer (a fatal error). Our own reader is never closed.
        source = (
            stdin
            if stdin is not None
            else open(  # noqa: SIM115
                sys.stdin.fileno(), "rb", buffering=1 << 16, closefd=False
            )
        )
    else:
        try:
            source = open(path, "rb", buffering=1 << 16)  # noqa: SIM115 (the caller closes it)
        except IsADirectoryError:
            raise ManifestError(
                f"{name} is a folder, not a manifest: pass the path of a .csv or .jsonl file"
            ) from None
        except OSError as exc:
            raise ManifestError(
                f"cannot open the manifest {name}: {exc.strerror or exc}; "
                "check the path and its permissions"
            ) from None
        closers.append(source)
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
    if head != _GZIP_MAGIC:
        return source, False
    unzipped = gzip.GzipFile(fileobj=source, mode="rb")
    closers.append(unzipped)
    return cast(BinaryIO, unzipped), True


#: Byte order marks of the encodings Excel's "Unicode Text" and others write; longest first.
_WIDE_BOMS = (
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)
_SCAN_CHUNK = 1 << 20


class NotUtf8(ManifestError):
    """The manifest is not UTF-8 as a whole (a UTF-16/32 BOM, or an invalid byte found by
    ``scan_utf8``); the Manifest adds its name."""


def wide_bom(head: bytes) -> str | None:
    """The encoding a UTF-16/UTF-32 byte order mark at the start of ``head`` names."""
    for bom, name in _WIDE_BOMS:
        if head.startswith(bom):
            return name
    return None


def scan_utf8(stream: BinaryIO) -> tuple[int, int, int] | None:
    """Read ``stream`` to its end: (line, byte within the line, byte value) of the first
    byte that is not UTF-8, or None. Done before anything is sent so that a Windows-1252
    export is refused as a whole, not half sent (its ASCII rows are valid)."""
    carry = b""
    line, line_start, offset = 1, 0, 0  # offset: of ``carry``'s first byte in the stream
    while True:
        chunk = stream.read(_SCAN_CHUNK)
        if offset == 0 and wide_bom(chunk) is not None:
            return None  # UTF-16/32: refused by ``Lines`` with the right advice
        data = carry + chunk
        if not data:
            return None
        try:
            data.decode("utf-8")
            good = len(data)
        except UnicodeDecodeError as exc:
            # A character cut by the chunk's end is completed by the next read.
            if chunk and exc.reason == "unexpected end of data" and exc.start >= len(data) - 3:
                good = exc.start
            else:
                before = data[: exc.start]
                newlines = before.count(b"\n")
                if newlines:
                    line_start = offset + before.rindex(b"\n") + 1
                return line + newlines, offset + exc.start - line_start + 1, data[exc.start]
        done = data[:good]
        newlines = done.count(b"\n")
        if newlines:
            line += newlines
            line_start = offset + done.rindex(b"\n") + 1
        offset += good
        carry = data[good:]
        if not chunk:
            return None


class Transcoded(io.RawIOBase):
    """A binary stream in ``encoding`` read as UTF-8 (``--encoding cp1252``), so that the
    readers, line numbers and values work as for a UTF-8 file. Bytes invalid in
    ``encoding`` stay as they were (then invalid UTF-8: row errors ``invalid_utf8``)."""

    def __init__(self, source: BinaryIO, encoding: str) -> None:
        self._read = getattr(source, "read1", source.read)
        self._decoder = codecs.getincrementaldecoder(encoding)("surrogateescape")
        self._pending = b""
        self._ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._pending and not self._ended:
            data = self._read(1 << 16)
            self._ended = not data
            text = self._decoder.decode(data, final=self._ended)
            self._pending = text.encode("utf-8", "surrogateescape")
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


class Lines:
    """Physical lines of a binary stream, split on LF, counted from 1; BOM removed.

    A read failure (truncated gzip, I/O error) never raises out of here: it is recorded in
    ``failure`` and iteration stops, so the caller can report it as one row error. A record
    longer than ``max_row_bytes`` raises ``LineTooLong`` once the line that overflows it
    has been skipped; the caller calls ``new_record`` before each record.
    """

    def __init__(
        self,
        stream: BinaryIO,
        *,
        confirm_eof: bool,
        max_row_bytes: int = DEFAULT_MAX_ROW_BYTES,
    ) -> None:
        self._stream = stream
        # gzip hands out the data it decoded before noticing a truncation; a last line
        # without LF is only trusted once a further read proves the stream ended cleanly.
        self._confirm_eof = confirm_eof
        self.max_row_bytes = max_row_bytes
        self._budget = max_row_bytes
        self.number = 0
        #: Bytes of the lines returned so far: the feed bounds its chunks by what they hold.
        self.bytes_read = 0
        self.failure: str | None = None
        self._first = True

    def new_record(self) -> None:
        """Start counting a new record's bytes against ``max_row_bytes``."""
        self._budget = self.max_row_bytes

    def __iter__(self) -> Lines:
        return self

    def __next__(self) -> bytes:
        if self.failure is not None:
            raise StopIteration
        budget = self._budget
        try:
            line = self._stream.readline(budget + 1)
            if len(line) > budget:
                self.number += 1
                self._first = False
                size = len(line)
                if not line.endswith(b"\n"):
                    size += self._skip_rest()
                raise LineTooLong(self.number, size, line[:_HEAD_BYTES])
            if self._confirm_eof and line and not line.endswith(b"\n"):
                self._stream.readline(1)
        except READ_ERRORS as exc:
            self.failure = str(exc) or type(exc).__name__
            raise StopIteration from None
        if not line:
            raise StopIteration
        self._budget -= len(line)
        self.bytes_read += len(line)
        self.number += 1
        if self._first:
            self._first = False
            if line.startswith(_BOM):
                line = line[3:]
            wide = wide_bom(line)
            if wide is not None:
                raise NotUtf8(
                    f"is {wide} text (its byte order mark says so), not UTF-8; re-save it as "
                    f"UTF-8 (iconv -f {wide} -t UTF-8 IN > OUT, or in Excel: CSV UTF-8)"
                )
        return line

    def _skip_rest(self) -> int:
        """Read and drop the rest of the current line; return how many bytes that was."""
        skipped = 0
        while True:
            chunk = self._stream.readline(_SKIP_CHUNK)
            skipped += len(chunk)
            if not chunk or chunk.endswith(b"\n"):
                return skipped


# --- what the readers build on lines --------------------------------------------------


def sanitize(value: str) -> str:
    """Undecodable bytes (surrogate-escaped) as visible ``\\xNN`` text, safe to encode."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def first_bad_byte(values: list[str], names: tuple[str, ...]) -> str:
    """Describe where the first undecodable byte of a record is, for a person."""
    for index, value in enumerate(values):
        for pos, char in enumerate(value):
            if "\udc80" <= char <= "\udcff":
                name = names[index] if index < len(names) else f"column {index + 1}"
                return f"{name} has byte 0x{ord(char) - 0xDC00:02X} at character {pos + 1}"
    return "the record has an undecodable byte"


def too_long_error(err: LineTooLong, start: int, limit: int) -> RowError:
    """The row error for a record cut off at ``max_row_bytes``."""
    if err.line == start:
        what = f"line {start} is {err.size:,} bytes long, over max_row_bytes ({limit:,})"
    else:
        what = (
            f"the record starting at line {start} passes max_row_bytes ({limit:,}) at line "
            f"{err.line}"
        )
    return RowError(
        line=start,
        error="line_too_long",
        message=(
            f"{what}; it starts with {show_head(err.head)}: a manifest row is a few hundred "
            "bytes, so check for an unclosed quote or a stray value, or raise max_row_bytes"
        ),
    )


def one_line(text: str) -> str:
    """``text`` with line breaks and other control characters as their escapes (\\n,
    \\x00, \\u2028), so an echoed value cannot split a one-line message."""
    return _LINE_BREAKING.sub(lambda m: repr(m.group())[1:-1], text)


def show_head(head: bytes) -> str:
    """The first bytes of a line, readable and safe to write anywhere."""
    return repr(head.decode("utf-8", "backslashreplace")) + "…"


class Decoded:
    """A CSV record's lines as text for the csv module, flagging any that is not UTF-8.

    An iterator class, not a generator: ``LineTooLong`` passes through the csv module to
    the reader loop, and a generator that raised could not be resumed afterwards.
    """

    def __init__(self, lines: Lines) -> None:
        self._lines = lines
        self.bad_utf8 = False

    def __iter__(self) -> Decoded:
        return self

    def __next__(self) -> str:
        raw = next(self._lines)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            # Keep the bytes (as surrogates) so the record still parses; the flag turns
            # the record into an invalid_utf8 row error.
            self.bad_utf8 = True
            return raw.decode("utf-8", "surrogateescape")


def chain_lines(first: list[bytes | LineTooLong], rest: Lines) -> Iterator[bytes | LineTooLong]:
    """The look-ahead lines, then the remaining ones (keeps the look-ahead list short-lived);
    a line over ``max_row_bytes`` comes as its ``LineTooLong``."""
    yield from first
    first.clear()
    while True:
        rest.new_record()
        try:
            yield next(rest)
        except StopIteration:
            return
        except LineTooLong as exc:
            yield exc
