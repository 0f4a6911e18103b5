"""A group's manifest fingerprint (``postgres_group.Fingerprint``): digest, length and the
physical lines the reader numbers, for plain and gzip files."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

from provisioner._state.postgres_group import Fingerprint


def test_plain_file_lines_count_a_last_line_without_newline(tmp_path: Path) -> None:
    """Lines are LF lines; a last line without its LF still counts; digest is of the bytes."""
    path = tmp_path / "m.csv"
    data = b"campaign_id\nc1\nc2"
    path.write_bytes(data)
    fp = Fingerprint.of(str(path))
    assert fp == Fingerprint(hashlib.sha256(data).hexdigest(), len(data), 3)


def test_gzip_lines_are_counted_in_the_decompressed_text(tmp_path: Path) -> None:
    """A .gz manifest's lines are those of its text (the reader's line numbers); its
    digest and length are of the compressed bytes."""
    path = tmp_path / "m.csv.gz"
    text = b"".join(b"c%d\n" % i for i in range(5000))
    path.write_bytes(gzip.compress(b"campaign_id\n" + text))
    fp = Fingerprint.of(str(path))
    assert fp.lines == 5001
    assert fp.length == path.stat().st_size


def test_one_more_line_changes_the_fingerprint(tmp_path: Path) -> None:
    """Another length or digest is another manifest (the group refuses it)."""
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_bytes(b"campaign_id\nc1\n")
    b.write_bytes(b"campaign_id\nc1\nc2\n")
    assert Fingerprint.of(str(a)) != Fingerprint.of(str(b))
