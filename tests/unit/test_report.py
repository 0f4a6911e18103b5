"""The end-of-run summary a person reads: counts, files, and what to do next."""

from __future__ import annotations

import math
from pathlib import Path

from provisioner._outputs.report import human_summary


def test_summary_says_when_deferred_rows_can_run() -> None:
    """Deferred rows: the reason, when the next window opens, and to run again then."""
    text = human_summary(
        {"run_id": "r", "exit_code": 3, "duration_s": 1.0,
         "counts": {"created": 100, "deferred": 12}, "deferred_reasons": {"quota": 12},
         "quota": {"deferred_until": "2026-11-27T00:00:00.050Z"}},
        Path("out"),
    )  # fmt: skip
    assert "12 rows deferred by quota" in text
    assert "2026-11-27 00:00 UTC" in text
    assert "run the same command again" in text
    assert "out/results.jsonl" in text


def test_summary_names_the_most_common_failures() -> None:
    """Failed rows: where to look and the most common error codes first."""
    text = human_summary(
        {"run_id": "r", "exit_code": 1, "duration_s": 1.0, "counts": {"failed": 3},
         "errors": {"invalid_campaign_id": 2, "too_long": 1}},
        Path("out"),
    )  # fmt: skip
    assert "3 rows failed: see failures.jsonl; most common: invalid_campaign_id (2)" in text


def test_summary_warns_about_rows_in_doubt() -> None:
    """Rows in doubt: tell the person to check the dashboard before --retry-in-doubt."""
    text = human_summary(
        {"run_id": "r", "exit_code": 1, "duration_s": 1.0, "counts": {"failed": 1},
         "errors": {"in_doubt": 1}},
        Path("out"),
    )  # fmt: skip
    assert "dashboard" in text
    assert "--retry-in-doubt" in text


def test_summary_says_how_many_windows_deferred_rows_need() -> None:
    """Per workspace: how many more quota windows the deferred rows need."""
    text = human_summary(
        {"run_id": "r", "exit_code": 3, "duration_s": 1.0, "counts": {"deferred": 250},
         "deferred_reasons": {"quota": 250}, "quota": {"reset_at": "2026-11-27T00:00:00Z"},
         "workspaces": [{"name": "us", "workspace": "ws-1", "deferred_rows": 250,
                         "windows_needed": 3}]},
        Path("out"),
    )  # fmt: skip
    assert "workspace us (ws-1): 250 deferred rows need 3 more quota window(s)" in text


def test_summary_says_when_the_manifest_was_not_read_to_its_end() -> None:
    """A cut-short reading: how many rows were read and that the rest are in no file."""
    text = human_summary(
        {"run_id": "r", "exit_code": 143, "duration_s": 1.0, "counts": {"created": 3},
         "rows_read": 3, "manifest_read_to_end": False},
        Path("out"),
    )  # fmt: skip
    assert "not read to its end" in text
    assert "rows after the first 3 are in no output file" in text
    for finished in (True, None):  # a whole reading, or a summary from an older run
        summary = {"run_id": "r", "exit_code": 0, "duration_s": 1.0, "counts": {"created": 3}}
        if finished is not None:
            summary["manifest_read_to_end"] = finished
        assert "not read to its end" not in human_summary(summary, Path("out"))


def test_paths_and_values_with_control_characters_cannot_forge_lines() -> None:
    """A newline, an escape or a line separator in --out or a message is printed escaped."""
    summary = {
        "run_id": "r\x1b[2J",
        "exit_code": 0,
        "counts": {"created": 1, "deferred": 1},
        "deferred_reasons": {"key_refused": 1},
        "workspaces": [{"name": "w", "stop_message": "bad\nprovisioner: run x finished OK"}],
    }
    text = human_summary(summary, Path("/tmp/out\nprovisioner: forged\u2028line"))
    assert len(text.splitlines()) == 4
    assert "\x1b" not in text
    assert "/tmp/out\\nprovisioner: forged\\u2028line/results.jsonl" in text
    assert "bad\\nprovisioner: run x finished OK" in text


def test_refused_key_names_the_ip_allowlist() -> None:
    """A refused key: the next step names the key's IP allowlist as a possible cause."""
    text = human_summary(
        {"run_id": "r", "exit_code": 4, "duration_s": 1.0, "counts": {"deferred": 5},
         "deferred_reasons": {"key_refused": 5}},
        Path("out"),
    )  # fmt: skip
    assert "IP allowlist" in text


def test_summary_dates_the_last_deferred_row() -> None:
    """With a plan, the report says when the last deferred row is expected to be created."""
    text = human_summary(
        {"run_id": "r", "exit_code": 3, "duration_s": 1.0, "counts": {"deferred": 250},
         "deferred_reasons": {"quota": 250}, "quota": {"reset_at": "2026-11-27T00:00:00Z"},
         "workspaces": [{"name": "us", "workspace": "ws-1", "deferred_rows": 250,
                         "windows_needed": 3, "quota_per_window": 100,
                         "finishes_at": "2026-11-29T00:00:00.000Z"}]},
        Path("out"),
    )  # fmt: skip
    assert "at 100 per window the last is expected to be created 2026-11-29 00:00 UTC" in text


def test_iso_never_raises_on_a_time_no_datetime_holds() -> None:
    """A summary time from a garbled value (inf, NaN, 1e30, past year 9999) is clamped to
    the ends of years 1..9999 rather than raising, so the summary always comes out."""
    from provisioner._core.times import iso

    far = "9999-12-31T23:59:59.999Z"
    assert [iso(v) for v in (1e30, math.inf, math.nan, 253402300800.0 + 86400)] == [far] * 4
    assert iso(-1e30) == "0001-01-01T00:00:00.000Z"
    assert iso(0.0) == "1970-01-01T00:00:00.000Z"


def test_rows_per_s_counts_rows_sent_not_deferred_or_skipped() -> None:
    """summary.json's rows_per_s counts created and failed rows only (issue 13): a run
    that deferred or skipped everything sent nothing, at 0 rows a second."""
    from provisioner._outputs.summary import RunStats

    stats = RunStats()
    stats.counts["deferred"] = 1000
    stats.counts["skipped"] = 500
    stats.started_mono -= 10.0
    assert stats.summary(run_id="r", manifest="m", exit_code=3)["rows_per_s"] == 0.0
    stats.counts["created"] = 100
    stats.sent = 100
    assert stats.summary(run_id="r", manifest="m", exit_code=3)["rows_per_s"] == 10.0


async def test_rows_per_s_counts_rows_whose_request_was_sent(tmp_path: Path) -> None:
    """rows_per_s counts created rows and rows failed after a request (a 4xx), never an
    invalid row that failed without one, for the run and for its workspace (issue 13)."""
    from provisioner._core.models import RowError, Status
    from provisioner._pipeline.outcomes import failed_from_error
    from provisioner.testing import ScriptedSender, created, invalid
    from tests.unit.pipeline_kit import pipeline, row

    sender = ScriptedSender([created(), invalid()])
    async with pipeline(tmp_path, sender) as kit:
        for line in range(10, 1010):
            bad = RowError(line, "invalid_campaign_id", "campaign_id is empty", "campaign_id")
            kit.run.emit(failed_from_error(bad), None)
        await kit.send([row(2, send_id="s-2"), row(3, send_id="s-3")])
    stats = kit.run.stats
    assert (stats.counts[Status.CREATED.value], stats.counts[Status.FAILED.value]) == (1, 1001)
    assert (stats.sent, kit.lane.stats.sent) == (2, 2)
    stats.started_mono -= 10.0
    # 2 rows sent over a bit more than 10 s; the 1,000 invalid rows would make it ~100.
    assert stats.summary(run_id="r", manifest="m", exit_code=1)["rows_per_s"] == 0.2
