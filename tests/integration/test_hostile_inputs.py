"""Hostile manifests end to end: no crash, each bad row reported, good rows sent byte-exact.

Every case of the generated corpus (hostile_corpus*.py) runs through the Python API against
a real sandbox; a representative set (refused files and row-level cases) also runs through
the CLI as a subprocess, the way cron runs it, to prove there is no traceback and a
refusal is one line.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from provisioner import api
from provisioner.errors import ManifestError
from provisioner.sandbox import Sandbox
from tests.conftest import SandboxFactory

from .helpers import assert_invariant, outputs, read_jsonl, settings_for
from .hostile_corpus import ROW_LIMIT, Case, long_line
from .hostile_corpus_files import corpus
from .test_cli import provisioner, run_args

CASES = corpus()
#: Cases that also run through the CLI subprocess (the API test covers the rest; a
#: subprocess costs ~0.3 s).
CLI_CASES = {
    "csv_empty",
    "csv_latin1_header",
    "csv_header_too_long",
    "gzip_not_gzip",
    "csv_malformed_quoting",
    "csv_invalid_utf8",
    "confusable_campaign_ids",
    "formula_strings",
    "csv_long_line_3mb",
    "csv_gzip_truncated",
    "jsonl_malformed",
    "jsonl_encodings_and_formulas",
}
#: A failures.jsonl record echoes at most ~200 characters of each value: far below this.
MAX_FAILURE_RECORD = 4096


def _write(case: Case, folder: Path) -> Path:
    path = folder / f"manifest{case.suffix}"
    path.write_bytes(case.data)
    return path


async def _sandbox(factory: SandboxFactory) -> Sandbox:
    # Quota is not under test here: every valid row must be sent.
    return await factory(daily_quota=1_000_000)


def check_outputs(case: Case, out: Path, sandbox: Sandbox) -> None:
    """The outputs and the sandbox's ledger match what ``case`` expects, value for value."""
    results, failures, deferred, summary = outputs(out)
    assert not deferred
    assert summary["exit_code"] == case.exit_code
    assert sorted((f["line"], f["error"]) for f in failures) == sorted(
        (f.line, f.error) for f in case.failed
    )
    fields = {f["line"]: f["field"] for f in failures}
    for bad in case.failed:
        if bad.field is not None:
            assert fields[bad.line] == bad.field, bad
    for raw in (out / "failures.jsonl").read_bytes().splitlines():
        assert len(raw) < MAX_FAILURE_RECORD, raw[:300]

    created = {r["line"]: r for r in results if r["status"] == "created"}
    assert sorted(created) == [c.line for c in case.created]
    for expected in case.created:
        got = created[expected.line]
        assert got["campaign_id"] == expected.campaign_id, expected
        if expected.send_id is not None:
            assert got["send_id"] == expected.send_id, expected
    assert sorted(r["line"] for r in results if r["status"] == "duplicate") == list(case.duplicates)
    for line, column, value in case.passed_through:
        assert created[line][column] == value

    # What Braze received, byte for byte, is exactly what the manifest holds.
    ledger = Counter((e.campaign_id, e.send_id) for e in sandbox.ledger.created)
    assert ledger == Counter((r["campaign_id"], r["send_id"]) for r in created.values())
    assert Counter(e.campaign_id for e in sandbox.ledger.created) == Counter(
        c.campaign_id for c in case.created
    )
    assert_invariant(out, case.rows_total)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_hostile_case_through_the_api(
    case: Case, sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """Each hostile manifest ends as its case says: rows sent byte-exact or refused alone."""
    sandbox = await _sandbox(sandbox_factory)
    settings = settings_for(sandbox.url, tmp_path, _write(case, tmp_path))
    if case.refused is not None:
        with pytest.raises(ManifestError) as info:
            await api.run_async(settings)
        message = str(info.value)
        assert case.refused in message
        assert str(settings.manifest) in message
        assert "\n" not in message
        assert len(message) < 1000
        assert sandbox.ledger.total == 0
        return
    result = await api.run_async(settings)
    assert result.exit_code == case.exit_code
    check_outputs(case, tmp_path / "out", sandbox)


CLI = [c for c in CASES if c.name in CLI_CASES]


@pytest.mark.parametrize("case", CLI, ids=[c.name for c in CLI])
async def test_hostile_case_through_the_cli(
    case: Case, sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """The CLI never prints a traceback: exit code as expected, a refusal is one line."""
    sandbox = await _sandbox(sandbox_factory)
    manifest = _write(case, tmp_path)
    code, _, err = await provisioner(
        *run_args(sandbox.url, tmp_path, str(manifest), "--log-format", "json")
    )
    assert "Traceback" not in err
    assert code == case.exit_code, err[-2000:]
    if case.refused is not None:
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith("provisioner: error: ")
        assert str(manifest) in lines[0]
        assert case.refused in lines[0]
        assert sandbox.ledger.total == 0
        return
    check_outputs(case, tmp_path / "out", sandbox)


def test_corpus_covers_every_kind_of_bad_line() -> None:
    """The corpus exercises every reader and validation error code (a new code needs a case)."""
    from provisioner.validation import ERROR_CODES

    produced = {f.error for c in CASES for f in c.failed}
    # (unknown_workspace is not in ERROR_CODES: it needs a config; test_workspaces.py has it.)
    assert produced >= ERROR_CODES


@pytest.mark.slow
async def test_fifty_megabyte_line(sandbox_factory: SandboxFactory, tmp_path: Path) -> None:
    """A 50 MB line (and a 50 MB campaign_id) fail as line_too_long; the rest is sent."""
    case = long_line(50 * 1024 * 1024, name="csv_long_line_50mb")
    sandbox = await _sandbox(sandbox_factory)
    manifest = _write(case, tmp_path)
    code, _, err = await provisioner(*run_args(sandbox.url, tmp_path, str(manifest)))
    assert "Traceback" not in err
    assert code == 1
    check_outputs(case, tmp_path / "out", sandbox)
    messages = [f["message"] for f in read_jsonl(tmp_path / "out" / "failures.jsonl")]
    assert all(f"over max_row_bytes ({ROW_LIMIT:,})" in m for m in messages)
