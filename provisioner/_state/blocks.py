"""Compact outcome records (SQLite store): skipped rows as references to their creation,
deferred rows in compressed blocks.

A skip run over a million rows once stored a million copies of rows the store already
held (~157 bytes each), and a run deferring ten million rows ~162 bytes a row. Now:

* A **skipped** row is the pair (creating run, line of its creation): the creation's own
  outcome row holds everything a skipped row's results line shows (campaign_id, send_id,
  columns, created_at), so a batch of skipped rows is three integer lists (the lines and
  the references, delta-encoded) compressed with zlib: a few bytes a batch when a
  manifest is skipped in the order it was created. A row is kept as a reference only
  when the referenced outcome equals it exactly (same send_id, created_at and columns,
  the pass-through values included); any other row (its columns changed since) is
  stored in full, so a reference never changes what export writes.
* A **deferred** row's values are needed to write deferred.csv again: a batch of them is
  kept as one zlib-compressed JSON list (~10-25 bytes a row, measured in BENCHMARKS.md).

A skipped row's reference comes from the store's lookup, which finds the creation's
outcome in the search the skip needs anyway (``sqlite_reader.py``); ``record_skipped``
queues a batch's references as blocks (:func:`references`, :func:`skip_blocks`). The
writer thread compresses deferred rows inside the transaction that commits them
(``batch.compact``). The reader merges the blocks with the plain rows in line order
(:func:`merge`).
"""

from __future__ import annotations

import heapq
import itertools
import sqlite3
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import orjson

from provisioner._core.models import Outcome, Skip, Status
from provisioner._state.codec import LINE_INDEX, OUTCOME_COLUMNS, decode_outcome, encode_columns
from provisioner.errors import StateError

SKIPPED, DEFERRED = "skipped", "deferred"
SQL_BLOCK = (
    "INSERT OR REPLACE INTO blocks (run_seq, first_line, kind, last_line, rows, data)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
#: Rows per block at most: bounds what export holds decoded at a time.
BLOCK_ROWS = 4096
_LEVEL = 6  # zlib's default: level 9 measured ~3% smaller and 2x slower


def references(
    run_seq: int, skips: Sequence[Skip]
) -> tuple[list[tuple[int, int, int, int]], list[Skip]]:
    """Split skipped rows into references (run_seq, line, created seq, created line), one
    per row equal to the creation's outcome its lookup found (``Skip``'s ref: the same
    send_id, created_at and columns, pass-through values included), and the rest, which
    are kept in full so that a reference never changes what export writes."""
    refs: list[tuple[int, int, int, int]] = []
    plain: list[Skip] = []
    for skip in skips:
        ref = skip[5]
        if (
            ref is not None
            and ref[2] == skip[2]
            and ref[3] == skip[4]
            and ref[4] == encode_columns(skip[0].columns)
        ):
            refs.append((run_seq, skip[0].line, ref[0], ref[1]))
        else:
            plain.append(skip)
    return refs, plain


def _deltas(values: Iterable[int]) -> list[int]:
    out: list[int] = []
    last = 0
    for value in values:
        out.append(value - last)
        last = value
    return out


def _undeltas(deltas: Sequence[int]) -> list[int]:
    return list(itertools.accumulate(deltas))


def skip_blocks(refs: list[tuple[int, int, int, int]]) -> Iterator[tuple[Any, ...]]:
    """SQL_BLOCK parameters for references (run_seq, line, created seq, created line)."""
    refs.sort(key=lambda r: (r[0], r[1]))
    for seq, group in itertools.groupby(refs, key=lambda r: r[0]):
        rows = list(group)
        for start in range(0, len(rows), BLOCK_ROWS):
            part = rows[start : start + BLOCK_ROWS]
            data = orjson.dumps(
                [_deltas(r[1] for r in part), _deltas(r[2] for r in part),
                 _deltas(r[3] for r in part)]
            )  # fmt: skip
            params = (seq, part[0][1], SKIPPED, part[-1][1], len(part), zlib.compress(data, _LEVEL))
            yield params


def deferred_blocks(rows: list[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
    """SQL_BLOCK parameters for deferred outcomes rows (codec.encode_outcome's)."""
    rows.sort(key=lambda r: (r[0], r[LINE_INDEX]))
    for seq, group in itertools.groupby(rows, key=lambda r: r[0]):
        kept = list(group)
        for start in range(0, len(kept), BLOCK_ROWS):
            part = kept[start : start + BLOCK_ROWS]
            # From status on: the workspace and key are not part of any output file.
            data = orjson.dumps([row[3:] for row in part])
            first, last = part[0][LINE_INDEX], part[-1][LINE_INDEX]
            params = (seq, first, DEFERRED, last, len(part), zlib.compress(data, _LEVEL))
            yield params


# -- the read side


def decode_block(
    conn: sqlite3.Connection,
    run_seq: int,
    kind: str,
    data: bytes,
    run_id_of: Callable[[int], str],
    run_id: str,
) -> list[Outcome]:
    """A block's outcomes, in line order."""
    raw = orjson.loads(zlib.decompress(data))
    if kind == DEFERRED:
        return [decode_outcome((run_seq, None, None, *row), run_id_of) for row in raw]
    lines, seqs, created = (_undeltas(d) for d in raw)
    pairs = list(zip(seqs, created, strict=True))
    found = _creations(conn, sorted(set(pairs)))
    out: list[Outcome] = []
    for line, pair in zip(lines, pairs, strict=True):
        creation = found.get(pair)
        if creation is None:
            raise StateError(
                f"run {run_id!r}: skipped line {line} refers to the creation at line {pair[1]}"
                f" of run {run_id_of(pair[0])!r}, which is no longer in the store; its"
                " other rows export as stored"
            )
        out.append(
            Outcome(
                line=line,
                status=Status.SKIPPED,
                campaign_id=creation.campaign_id,
                send_id=creation.send_id,
                columns=creation.columns,
                created_run=run_id_of(pair[0]),
                created_at=creation.created_at,
            )
        )
    return out


def _creations(conn: sqlite3.Connection, pairs: list[tuple[int, int]]) -> dict[Any, Outcome]:
    found: dict[Any, Outcome] = {}
    for start in range(0, len(pairs), 2000):
        part = pairs[start : start + 2000]
        values = ", ".join(["(?, ?)"] * len(part))
        sql = (
            f"SELECT {', '.join('o.' + c.strip() for c in OUTCOME_COLUMNS.split(','))}"
            f" FROM (VALUES {values}) AS v"
            " JOIN outcomes AS o ON o.run_seq = v.column1 AND o.line = v.column2"
        )
        for row in conn.execute(sql, list(itertools.chain.from_iterable(part))):
            # replace(): decode_outcome leaves a created row's created_at out.
            found[row[0], row[LINE_INDEX]] = replace(decode_outcome(row, str), created_at=row[-1])
    return found


def merge(plain: Iterator[Outcome], blocks: Iterator[list[Outcome]]) -> Iterator[Outcome]:
    """Outcomes in line order from ``plain`` (in line order) and ``blocks`` (each in line
    order, the blocks in order of their first line; their ranges may overlap: two lanes,
    or rows that finished out of order)."""
    return heapq.merge(plain, _merged_blocks(blocks), key=_line)


def _line(outcome: Outcome) -> int:
    return outcome.line


def _merged_blocks(blocks: Iterator[list[Outcome]]) -> Iterator[Outcome]:
    # A heap of open blocks: a block is opened once every row before its first line has
    # been given, so only blocks whose ranges overlap are held at the same time.
    heap: list[tuple[int, int, Outcome, Iterator[Outcome]]] = []
    counter = itertools.count()

    def pop() -> Outcome:
        _, _, outcome, it = heapq.heappop(heap)
        following = next(it, None)
        if following is not None:
            heapq.heappush(heap, (following.line, next(counter), following, it))
        return outcome

    for block in blocks:
        if not block:
            continue
        while heap and heap[0][0] < block[0].line:
            yield pop()
        it = iter(block)
        head = next(it)
        heapq.heappush(heap, (head.line, next(counter), head, it))
    while heap:
        yield pop()
