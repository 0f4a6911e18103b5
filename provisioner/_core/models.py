"""Records that travel down the pipeline: manifest rows, row errors and outcomes."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from operator import itemgetter

#: A manifest row's columns in their original order, values as read (CSV: str;
#: JSONL: any JSON value). Kept whole so that ``deferred.csv`` can reproduce the row.
Columns = tuple[tuple[str, object], ...]

#: The byte budget of each buffer that holds rows between the manifest and the state store
#: (the feed's chunk and its pipe queue, the reader's lookup batch, each workspace's queue,
#: the store writer's queue). Each also has a row count bound, which binds for ordinary
#: rows; this one binds for wide rows (150,000 columns), so memory stays flat whatever a
#: row's width. One row larger than the budget still passes, alone. docs/DESIGN.md, "Memory".
BUFFER_BYTES = 4 << 20
#: What one column costs in memory besides its value's text: the (name, value) pair, its
#: slot in the row and the value's string header (56 + 8 + ~40 bytes on CPython). A row's
#: size for BUFFER_BYTES is its text's length plus this per column: a 150 KB line of
#: 150,000 empty values is ~10 MB as a row, while its text alone would say 150 KB.
COLUMN_BYTES = 100


def row_bytes(columns: Columns) -> int:
    """A row's approximate size in memory, for BUFFER_BYTES: COLUMN_BYTES a column plus
    the length of each value's text. Linear in the columns: for rows on their way to a
    request, not for every row read (the feed counts the line's bytes instead)."""
    # C iterators only (str of a str is itself): ~3 ms for 150,000 columns, not 150.
    return COLUMN_BYTES * len(columns) + sum(map(len, map(str, map(itemgetter(1), columns))))


#: Column names the provisioner itself interprets.
CAMPAIGN_ID = "campaign_id"
SEND_ID = "send_id"
WORKSPACE = "workspace"
RESERVED_COLUMNS = frozenset({CAMPAIGN_ID, SEND_ID})

#: The furthest ahead (seconds) a server's ``X-RateLimit-Reset`` or ``Retry-After`` may
#: point and still be believed: two days. Braze's window is one UTC day, so no honest
#: reset is more than a day away; the second day allows for clock skew and a contract's
#: longer window. Anything beyond is a garbled header (as ``inf`` or text are), and a
#: stored window beyond it is dropped when the store opens.
MAX_RESET_AHEAD = 2 * 86400.0


class Status(StrEnum):
    """Where a row ended. Every row gets exactly one."""

    CREATED = "created"
    DUPLICATE = "duplicate"
    SKIPPED = "skipped"
    FAILED = "failed"
    DEFERRED = "deferred"


@dataclass(frozen=True, slots=True)
class RawRow:
    """A manifest record as parsed, before validation. ``line`` is 1-based and counts
    physical lines of the file (a CSV record spanning lines has its first line)."""

    line: int
    columns: Columns


@dataclass(frozen=True, slots=True)
class Row:
    """A valid row, ready to send."""

    line: int
    campaign_id: str
    send_id: str | None
    columns: Columns
    #: The manifest's ``workspace`` column (None: the default workspace).
    workspace: str | None = None

    def extra(self) -> Columns:
        """The pass-through columns (all but campaign_id and send_id)."""
        return tuple((k, v) for k, v in self.columns if k not in RESERVED_COLUMNS)


@dataclass(frozen=True, slots=True)
class RowError:
    """A row that cannot be sent: malformed in the file, or invalid by Braze's rules.

    ``error`` is a stable machine-readable code (see ``_manifest.rules.ERROR_CODES``);
    ``field`` names the offending column, or is None when the line itself is malformed.
    """

    line: int
    error: str
    message: str
    field: str | None = None
    campaign_id: str | None = None
    send_id: str | None = None
    columns: Columns = ()


@dataclass(frozen=True, slots=True)
class Outcome:
    """The final fate of one manifest row, as written to the output files."""

    line: int
    status: Status
    campaign_id: str | None
    send_id: str | None
    columns: Columns = ()
    attempts: int = 0
    http_status: int | None = None
    latency_ms: float | None = None
    #: failed rows: stable code, human message, whether a later run may succeed.
    error: str | None = None
    message: str | None = None
    retryable: bool = False
    field: str | None = None
    #: duplicate rows: the line of the first copy.
    duplicate_of: int | None = None
    #: deferred rows: why they were not sent (quota, rate_limited, key_refused, ...).
    reason: str | None = None
    #: skipped rows: the run that created the combination, and when (epoch seconds).
    created_run: str | None = None
    created_at: float | None = None


#: Where a store holds the outcome of a creation, as its lookup found it: (run_seq, line,
#: send_id, created_at, the stored columns). The SQLite store keeps a skipped row that
#: equals that outcome as this reference alone (``_state/blocks.py``).
CreationRef = tuple[int, int, str | None, float | None, str | bytes | None]
#: A row an earlier run created, which this run skips, as the runner hands a batch of them to
#: the state store and the sink without building an Outcome for each (a skip run handles
#: every row so): (row, key, send_id, created_run, created_at, ref). ``key`` is the row's
#: ``identity.RowKey``; send_id is the created one (else the row's); created_at in epoch s;
#: ``ref`` the lookup's ``Prior.ref``.
Skip = tuple[Row, tuple[str, str], str | None, str, float, CreationRef | None]
