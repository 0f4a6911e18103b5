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


def iso(epoch: float) -> str:
    """Epoch seconds as ISO-8601 UTC with milliseconds, e.g. 2024-05-01T12:00:00.000Z."""
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
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def utc_minute(epoch: float) -> str:
    """Epoch seconds for people, to the minute: "2026-11-27 00:00 UTC"."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(epoch))
