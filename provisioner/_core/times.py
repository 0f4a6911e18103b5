"""The one way times are written: ISO-8601 UTC with milliseconds and a Z.

Every output file, summary.json, the store's views, the logs and the lock file write
epoch seconds through ``iso``; people read ``utc_minute`` (the progress display and the
end-of-run summary).
"""

from __future__ import annotations

import functools
import math
import time
from datetime import UTC, datetime

#: The range ``iso`` can write (years 1 to 9999): what is outside is clamped to its ends.
_ISO_MIN, _ISO_MAX = -62135596800.0, 253402300799.9995


def iso(epoch: float) -> str:
    """Epoch seconds as ISO-8601 UTC with milliseconds, e.g. 2024-05-01T12:00:00.000Z.

    Never raises: a value no datetime holds (NaN, inf, past year 9999, which only a
    garbled server value or a damaged store can produce) is clamped to year 1 or 9999,
    so that a summary or ``status`` always comes out.
    """
    if not _ISO_MIN <= epoch <= _ISO_MAX:
        epoch = _ISO_MIN if epoch < 0 else _ISO_MAX  # NaN compares false: the far end
    # What datetime.fromtimestamp(...).isoformat(timespec="milliseconds") gives (fraction
    # rounded half-even to microseconds, then truncated to milliseconds), with the date and
    # time formatted once per second: a skip run formats one created_at per row, and
    # isoformat was 8% of its time.
    second = math.floor(epoch)
    micros = round((epoch - second) * 1e6)
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    return _iso_second(second) + _MILLIS[micros // 1000]


def iso_or_none(epoch: float | None) -> str | None:
    """``iso``, passing None through (a field that may be unknown)."""
    return None if epoch is None else iso(epoch)


#: ".000Z" to ".999Z": formatting the milliseconds with a format spec cost more than
#: the rest of iso.
_MILLIS = tuple(f".{millis:03d}Z" for millis in range(1000))


@functools.lru_cache(maxsize=1024)
def _iso_second(second: int) -> str:
    # isoformat, not strftime: glibc's %Y writes year 1 as "1", not "0001".
    return datetime.fromtimestamp(second, UTC).isoformat()[:19]


def utc_minute(epoch: float) -> str:
    """Epoch seconds for people, to the minute: "2026-11-27 00:00 UTC"."""
    if not _ISO_MIN <= epoch <= _ISO_MAX:
        epoch = _ISO_MIN if epoch < 0 else _ISO_MAX
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(epoch))
