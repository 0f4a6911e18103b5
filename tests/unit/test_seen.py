"""SeenIndex: row identities, derived send ids and duplicates across batches."""

from __future__ import annotations

import pytest

from provisioner._core.identity import derive_send_id
from provisioner._core.models import Row
from provisioner._manifest.seen import SeenIndex, pair_digest


def row(line: int, cid: str, sid: str | None = None) -> Row:
    return Row(line, cid, sid, (("campaign_id", cid), ("send_id", sid or "")))


def test_rows_without_send_id_are_keyed_by_occurrence_across_batches() -> None:
    """The n-th send_id-less row of a campaign is key n:n, also when batches split them."""
    seen = SeenIndex()
    first = seen.assign([row(2, "a"), row(3, "b"), row(4, "a")])
    second = seen.assign([row(5, "a"), row(6, "a", "s")])
    keys = [x.key for x in first + second]
    assert keys == [("a", "n:1"), ("b", "n:1"), ("a", "n:2"), ("a", "n:3"), ("a", "s:s")]
    seen.close()


def test_duplicates_report_the_first_line_even_batches_apart() -> None:
    """A repeated pair names the line of its first copy, within and across batches."""
    seen = SeenIndex()
    a = seen.assign([row(2, "c", "s"), row(3, "c", "t"), row(4, "c", "s")])
    b = seen.assign([row(9, "c", "s"), row(10, "d", "s")])
    assert [x.duplicate_of for x in a + b] == [None, None, 2, 2, None]
    seen.close()


def test_pair_encoding_is_unambiguous() -> None:
    """Pairs whose concatenations match are still different pairs."""
    assert pair_digest("ab", "c") != pair_digest("a", "bc")
    assert pair_digest("1:a", "b") != pair_digest("1", ":ab")


def test_derived_send_ids_follow_occurrences() -> None:
    """With a prefix, send_id-less rows get derived ids keyed like explicit send ids."""
    seen = SeenIndex("mig")
    got = seen.assign([row(2, "a"), row(3, "a")])
    assert [x.send_id for x in got] == [
        derive_send_id("mig", "a", 1),
        derive_send_id("mig", "a", 2),
    ]
    assert got[0].key == ("a", "s:" + derive_send_id("mig", "a", 1))
    seen.close()


@pytest.mark.parametrize(
    "pairs", [25_000, pytest.param(250_000, marks=pytest.mark.slow)], ids=["25k", "250k"]
)
def test_memory_stays_on_disk_for_many_rows(pairs: int) -> None:
    """Many pairs (250k in the slow variant) past a small page cache: duplicates still
    found (the table, not a dict, holds them)."""
    seen = SeenIndex(cache_kib=256)
    for start in range(0, pairs, 1000):
        seen.assign([row(i + 2, f"c{i}", "s") for i in range(start, start + 1000)])
    again = seen.assign([row(999_999, "c12345", "s")])
    assert again[0].duplicate_of == 12_347
    seen.close()
