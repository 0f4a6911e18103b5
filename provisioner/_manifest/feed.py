"""How the pipeline takes manifest records: straight from a file, or off the event loop
when the source can block (a pipe or a FIFO).

Reading a regular file never waits for long (the page cache, or one disk read), so the
reader parses it on the loop, where it costs nothing extra. A pipe is different:
``psql ... | provisioner run -`` may go quiet for minutes, and a read on the loop would
then freeze everything else: in-flight requests, timers, progress and the signal
handlers. So a pipe is read by a daemon thread into a bounded queue, and the loop takes
whatever has arrived. The queue is hand-written (a ``queue.Queue`` plus a wake-up flag)
because the loop must be woken only when it waits, not once per record; no library
bridges a blocking iterator that way.

Both bound what they hold by bytes as well as by records (``models.BUFFER_BYTES``): a
record's size is its line's bytes plus ``COLUMN_BYTES`` a column, so a chunk of wide rows
(150,000 columns) is a few rows, not 256 of them (2.2 GB measured before this bound).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import queue
import stat
import threading
from collections.abc import Iterator
from typing import Protocol, cast

from provisioner._core.models import BUFFER_BYTES, COLUMN_BYTES, RawRow, RowError
from provisioner._manifest.lines import Lines
from provisioner._manifest.reader import Manifest
from provisioner._manifest.records import Idle

Item = RawRow | RowError

_QUEUE_ITEMS = 4096  # the reader thread waits when the loop is this far behind
#: ... or when what it has queued holds this many bytes (models.BUFFER_BYTES)
_QUEUE_BYTES = BUFFER_BYTES
_END = object()


class Feed(Protocol):
    """Manifest records in the order of the file, a chunk at a time."""

    #: True when ``take`` may wait on another process (a pipe).
    can_wait: bool
    #: The approximate bytes the last chunk holds (its lines, plus COLUMN_BYTES a column).
    taken_bytes: int

    async def take(self, limit: int) -> tuple[list[Item], bool]:
        """Up to ``limit`` records (fewer once they hold BUFFER_BYTES) and whether the
        source has more ready; ``[]`` at the end.

        A short chunk with ``False`` means the source is waiting for its writer: what the
        reader holds should be sent now rather than when a full batch has arrived.
        """

    def close(self) -> None:
        """Stop reading (a thread blocked on a silent pipe is abandoned, not joined)."""


def feed_for(manifest: Manifest) -> Feed:
    """A thread-backed feed when the manifest's source can block, else a direct one."""
    if can_block(manifest):
        return ThreadFeed(manifest)
    return DirectFeed(manifest.records(idle=True), manifest.lines())


def can_block(manifest: Manifest) -> bool:
    """True when reading may wait on another process: standard input or a FIFO that is not
    a regular file. In-memory streams (tests, the Python API) never block."""
    fileno = manifest.source_fileno()
    if fileno is None:
        return False
    try:
        return not stat.S_ISREG(os.fstat(fileno).st_mode)
    except OSError:
        return False


class DirectFeed:
    """Reads on the loop: for regular files."""

    can_wait = False

    def __init__(self, items: Iterator[Item | Idle], lines: Lines) -> None:
        self._items = items
        self._lines = lines
        self.taken_bytes = 0

    async def take(self, limit: int) -> tuple[list[Item], bool]:
        """Up to ``limit`` records, parsed here and now; fewer (even none, with True) when
        a long run of blank lines gives the loop its turn, or once they hold BUFFER_BYTES."""
        chunk: list[Item] = []
        lines = self._lines
        start, cells = lines.bytes_read, 0
        try:
            for item in itertools.islice(self._items, limit):
                if isinstance(item, Idle):
                    return chunk, True
                chunk.append(item)
                cells += len(item.columns)
                if lines.bytes_read - start + COLUMN_BYTES * cells >= BUFFER_BYTES:
                    return chunk, True
            return chunk, len(chunk) == limit
        finally:
            self.taken_bytes = lines.bytes_read - start + COLUMN_BYTES * cells

    def close(self) -> None:
        """Nothing to stop."""


class ThreadFeed:
    """Reads in a daemon thread: for pipes, whose reads can wait indefinitely."""

    can_wait = True

    def __init__(self, manifest: Manifest) -> None:
        self._manifest = manifest
        self._loop = asyncio.get_running_loop()
        self._queue: queue.Queue[object] = queue.Queue(_QUEUE_ITEMS)
        self.taken_bytes = 0
        # Bytes queued = put - got: each counter has one writer (the thread, the loop).
        self._put_bytes = 0
        self._got_bytes = 0
        self._room = threading.Event()  # set by the loop after it took records
        self._waiting = threading.Event()  # set while the loop waits for a record
        self._wake = asyncio.Event()
        self._stopped = threading.Event()
        self._done = False
        self._thread = threading.Thread(
            target=self._pump,
            args=(iter(manifest), manifest.lines()),
            name="provisioner-manifest-reader",
            daemon=True,
        )
        self._thread.start()

    def _pump(self, items: Iterator[Item], lines: Lines) -> None:
        try:
            read = lines.bytes_read
            for item in items:
                size = lines.bytes_read - read + COLUMN_BYTES * len(item.columns)
                read = lines.bytes_read
                if not self._put((item, size), size):
                    return
        except BaseException as exc:  # handed to the loop, which raises it where it reads
            self._put(exc)
        self._put(_END)

    def _put(self, item: object, size: int = 0) -> bool:
        while size and self._put_bytes - self._got_bytes >= _QUEUE_BYTES:
            self._room.clear()
            # Checked again after clearing: a take in between is not missed.
            if self._put_bytes - self._got_bytes < _QUEUE_BYTES:
                break
            if self._stopped.is_set():
                return False
            self._room.wait(0.1)
        self._put_bytes += size
        while not self._stopped.is_set():
            try:
                self._queue.put(item, timeout=0.1)
            except queue.Full:
                continue
            if self._waiting.is_set():
                self._waiting.clear()
                self._loop.call_soon_threadsafe(self._wake.set)
            return True
        return False

    async def take(self, limit: int) -> tuple[list[Item], bool]:
        """Up to ``limit`` records that have arrived, waiting (without blocking the loop)
        for at least one."""
        chunk: list[Item] = []
        self.taken_bytes = 0
        try:
            return await self._take(chunk, limit)
        finally:
            self._got_bytes += self.taken_bytes
            self._room.set()

    async def _take(self, chunk: list[Item], limit: int) -> tuple[list[Item], bool]:
        while not self._done and len(chunk) < limit and self.taken_bytes < BUFFER_BYTES:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                if chunk:
                    return chunk, False
                self._wake.clear()
                self._waiting.set()
                # Checked again after saying so: a record put in between is not missed.
                if self._queue.empty():
                    await self._wake.wait()
                self._waiting.clear()
                continue
            if item is _END:
                self._done = True
            elif isinstance(item, BaseException):
                self._done = True
                raise item
            else:
                record, size = cast(tuple[Item, int], item)
                chunk.append(record)
                self.taken_bytes += size
        return chunk, not self._done

    def close(self) -> None:
        """Tell the thread to stop at its next record; if it is blocked on a silent pipe,
        leave it there (a daemon) and keep the manifest from closing what it reads."""
        self._stopped.set()
        self._thread.join(timeout=0.2)
        if self._thread.is_alive():
            self._manifest.detach()
