"""The outcomes table's row codec: an ``Outcome`` (or a skipped row, ``models.Skip``) to
the row the state store writes, and back.

Split from ``schema.py``, which uses :data:`OUTCOME_COLUMNS` in its statements and
:func:`decode_outcome` in its reader; ``store.py`` encodes on the caller's side of the
writer's queue.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from operator import attrgetter, itemgetter
from typing import Any

import orjson

from provisioner._core.models import Columns, Outcome, Skip, Status

#: Outcome fields stored as they are, in table order after the codec's own columns.
_PLAIN = (
    "line", "campaign_id", "send_id", "attempts", "http_status", "latency_ms", "error",
    "message", "retryable", "field", "duplicate_of", "reason", "created_at",
)  # fmt: skip
_plain_of = attrgetter(*_PLAIN)  # one C call for all thirteen fields: record() is hot
OUTCOME_COLUMNS = "run_seq, workspace, key, status, created_run, columns, " + ", ".join(_PLAIN)
#: Index of ``line`` in an outcomes row (iter_outcomes pages on it).
LINE_INDEX = 6
#: Index of the encoded ``columns`` in an outcomes row and in a skipped row's parameters.
COLUMNS_INDEX = 5
SKIPPED_COLUMNS_INDEX = 4


def columns_bytes(rows: Sequence[Sequence[Any]], index: int) -> int:
    """The length of the encoded columns of ``rows`` (at ``index``): what they hold while
    queued for the writer, beyond a few shared strings (the store's byte budget)."""
    return sum(map(len, filter(None, map(itemgetter(index), rows))))


def encode_outcome(
    run_seq: int, workspace: str, key: str | None, outcome: Outcome, seq_of: Mapping[str, int]
) -> tuple[object, ...]:
    """The outcomes row for ``outcome`` (in OUTCOME_COLUMNS order); ``key`` is RowKey[1]."""
    columns = encode_columns(outcome.columns)
    created_run: int | str | None = outcome.created_run
    if outcome.created_run is not None:
        created_run = seq_of.get(outcome.created_run, outcome.created_run)
    head = (run_seq, workspace, key, outcome.status.value, created_run, columns)
    return head + _plain_of(outcome)


def encode_columns(columns: Columns) -> str | bytes | None:
    if not columns:
        return None
    try:
        # Decoded to str at once: orjson's bytes keep a large allocation alive, which
        # measured 4-10x slower than this when a few thousand rows wait in the queue.
        return orjson.dumps(columns, default=str).decode()
    except TypeError:  # orjson refuses integers beyond 64 bits; the stdlib does not
        return json.dumps(columns, default=str).encode()


def encode_skipped(
    run_seq: int, workspace: str, skips: Sequence[Skip], seq_of: Mapping[str, int]
) -> list[tuple[object, ...]]:
    """The parameters of ``schema.SQL_SKIPPED`` for skipped rows: what :func:`encode_outcome`
    stores for each one's ``outcomes.skipped`` Outcome, without building the Outcomes (a
    skip run's every row)."""
    seqs: dict[str, int | str] = {}  # a batch's rows were mostly created by one run
    rows: list[tuple[object, ...]] = []
    for row, key, send_id, created_run, created_at, _ in skips:
        seq = seqs.get(created_run)
        if seq is None:
            seq = seqs[created_run] = seq_of.get(created_run, created_run)
        rows.append(
            (run_seq, workspace, key[1], seq, encode_columns(row.columns), row.line,
             row.campaign_id, send_id, created_at)
        )  # fmt: skip
    return rows


def decode_outcome(row: Sequence[Any], run_id_of: Callable[[int], str]) -> Outcome:
    """Rebuild the Outcome stored by :func:`encode_outcome`."""
    status, created_run, columns = row[3], row[4], row[5]
    if isinstance(columns, str):
        pairs = orjson.loads(columns)
    else:
        pairs = json.loads(columns) if isinstance(columns, bytes) else ()
    plain = dict(zip(_PLAIN, row[LINE_INDEX:], strict=True))
    plain["retryable"] = bool(plain["retryable"])
    if status == "created":
        # The store's time of the creation, kept for the skipped rows that refer to this
        # row (blocks.py); an Outcome has created_at for skipped rows only.
        plain["created_at"] = None
    return Outcome(
        status=Status(status),
        columns=tuple((name, value) for name, value in pairs),
        created_run=run_id_of(created_run) if isinstance(created_run, int) else created_run,
        **plain,
    )
