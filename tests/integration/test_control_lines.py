"""A line of only a form feed or a vertical tab ends in exactly one output file, end to end
(issue 13): the invariant "every manifest line ends in exactly one output file" holds for
characters that str.isspace / bytes.isspace count as white space."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from provisioner.sandbox.server import Sandbox

from .helpers import assert_invariant, outputs
from .test_cli import provisioner, run_args

_CSV = b"campaign_id,send_id\nc1,s1\n\x0c\nc2,s2\n\x0b\n\nc3,s3\n"  # " \t" is a CSV row
_JSONL = (
    b'{"campaign_id": "c1", "send_id": "s1"}\n\x0c\n{"campaign_id": "c2", "send_id": "s2"}\n'
    b'\x0b\n\n \t\n{"campaign_id": "c3", "send_id": "s3"}\n'
)


@pytest.mark.parametrize(
    ("fmt", "data", "control_lines", "error"),
    [("csv", _CSV, [3, 5], "wrong_column_count"), ("jsonl", _JSONL, [2, 4], "malformed_json")],
)
async def test_form_feed_and_vertical_tab_lines_land_in_failures(
    sandbox: Sandbox, tmp_path: Path, fmt: str, data: bytes, control_lines: list[int], error: str
) -> None:
    """Each form feed / vertical tab line is one failed row in failures.jsonl (its line, its
    error code); the blank lines are skipped; every other line is created once."""
    manifest = tmp_path / f"m.{fmt}"
    manifest.write_bytes(data)
    code, _, err = await provisioner(*run_args(sandbox.url, tmp_path, str(manifest)))
    assert code == 1, err  # the control lines are failed rows
    results, failures, deferred, summary = outputs(tmp_path / "out")
    assert_invariant(tmp_path / "out", 5)
    assert not deferred
    assert sorted(f["line"] for f in failures) == control_lines
    assert {f["error"] for f in failures} == {error}
    assert Counter(r["status"] for r in results) == {"created": 3}
    assert summary["counts"]["failed"] == 2
    assert sorted(e.send_id for e in sandbox.ledger.created) == ["s1", "s2", "s3"]
