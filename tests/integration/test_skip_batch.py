"""Skipped rows are emitted a batch at a time (``Run._emit_skipped``): the outputs, the
store, ``export`` and an output failure are as when each skipped row was emitted alone."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

from provisioner._core.models import Skip, Status
from provisioner._manifest.seen import SeenIndex
from provisioner._pipeline.outcomes import skipped
from provisioner._pipeline.runner import Run
from provisioner._pipeline.workspace_lane import Lane
from provisioner._state.opening import open_store
from provisioner._state.sqlite_reader import SqliteReader
from provisioner._state.store import Prior
from provisioner.api import run_pipeline
from provisioner.sandbox.server import FaultRule
from tests.conftest import SandboxFactory

from .helpers import assert_invariant, campaigns, outputs, settings_for, write_csv
from .test_cli import provisioner, run_args
from .test_filesystem import (
    export,
    needs_dev_full,
    one_error_line,
    results_on_dev_full,
    run_id_of,
)

_CREATED = b'"status":"created"'


def emit_each(self: Run, lane: Lane, skips: list[Skip]) -> None:
    """The per-row path the batch replaced: one emit() of outcomes.skipped per row."""
    for row, key, send_id, run_id, at, _ in skips:
        self.emit(skipped(row, send_id, Prior("created", run_id, at, send_id)), key, lane)


def mixed_rerun(created: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A re-run's rows: the created ones, broken up by new, duplicate, invalid, in-doubt
    rows, across more than one reader batch (512 valid rows)."""
    rows: list[tuple[str, str]] = [("d000000", "")]  # in doubt since the first run
    for i, pair in enumerate(created):
        rows.append(pair)
        if i % 7 == 3:
            rows.append((f"x{i:06d}", f"t{i:06d}"))  # new
        if i % 11 == 5:
            rows.append(pair)  # a duplicate of a skipped row
        if i % 13 == 6:
            rows.append(("", "x"))  # invalid
    return rows


def store_rows(path: Path) -> list[Any]:
    """The second run's outcomes as the store gives them back (all but created ones, whose
    latency differs per run; skipped ones are stored as references on one path, whole on
    the other) and the created and intents tables (without the clock's created_at, and the
    send ids the sandbox made up for the second run's rows), in a fixed order."""
    store = open_store(path, lock=False)
    try:
        (second, _) = store.recent_runs(2)
        outcomes = [o for o in store.iter_outcomes(second.run_id) if o.status != Status.CREATED]
    finally:
        store.close()
    conn = sqlite3.connect(path)
    try:
        return [
            *outcomes,
            *conn.execute(
                "SELECT workspace, campaign_id, key, run_seq, iif(run_seq = 1, send_id, NULL)"
                " FROM created ORDER BY 1, 2, 3"
            ),
            *conn.execute("SELECT * FROM intents ORDER BY 1, 2, 3"),
        ]
    finally:
        conn.close()


async def test_batched_skips_match_the_per_row_path(
    sandbox_factory: SandboxFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-run mixing skipped, duplicate, new, invalid and in-doubt rows writes the same
    results/failures/deferred lines (in the same order), summary counts and store rows as
    the per-row path, and `export` of it writes the run's lines again."""
    sandbox = await sandbox_factory(daily_quota=10_000)
    sandbox.add_faults([FaultRule(action="drop_after", times=1, campaign_id="d000000")])
    created = [*campaigns(560), *campaigns(20, with_send_id=False, prefix="n")]
    first = tmp_path / "first"
    first.mkdir()
    seed = write_csv(first / "m.csv", [("d000000", ""), *created])
    assert (await run_pipeline(settings_for(sandbox.url, first, seed))).exit_code == 1
    manifest = write_csv(tmp_path / "rerun.csv", mixed_rerun(created))
    runs: dict[str, Path] = {}
    for name in ("batched", "per_row"):
        where = runs[name] = tmp_path / name
        where.mkdir()
        shutil.copy(first / "state.sqlite3", where / "state.sqlite3")
        with monkeypatch.context() as patch:
            if name == "per_row":
                patch.setattr(Run, "_emit_skipped", emit_each)
            result = await run_pipeline(settings_for(sandbox.url, where, manifest))
        assert result.exit_code == 1  # the in-doubt and the invalid rows
    files = {name: where / "out" for name, where in runs.items()}
    batched, per_row = (outputs(files[name]) for name in ("batched", "per_row"))
    assert batched[0]
    assert batched[1]
    # Created rows finish in any order, and their latency differs: all other lines alike.
    for name in ("results.jsonl", "failures.jsonl"):
        a, b = ((files[n] / name).read_bytes().splitlines() for n in ("batched", "per_row"))
        assert [x for x in a if _CREATED not in x] == [x for x in b if _CREATED not in x]
        assert sorted(orjson.loads(x)["line"] for x in a) == sorted(
            orjson.loads(x)["line"] for x in b
        )
    assert (files["batched"] / "deferred.csv").read_bytes() == (
        files["per_row"] / "deferred.csv"
    ).read_bytes()
    assert batched[3]["counts"] == per_row[3]["counts"]
    counts = batched[3]["counts"]
    assert counts["skipped"] == 580
    assert counts["duplicate"] > 0
    assert counts["created"] > 0
    assert store_rows(runs["batched"] / "state.sqlite3") == store_rows(
        runs["per_row"] / "state.sqlite3"
    )
    assert_invariant(files["batched"], len(mixed_rerun(created)))
    # export rebuilds the files from the store, outcome by outcome: the same lines.
    await export(runs["batched"], batched[3]["run_id"], tmp_path / "exported")
    for name in ("results.jsonl", "failures.jsonl", "deferred.csv"):
        again = (tmp_path / "exported" / name).read_bytes().splitlines()
        original = (files["batched"] / name).read_bytes().splitlines()
        assert sorted(again) == sorted(original)


@needs_dev_full
async def test_output_failure_in_a_skipped_batch_loses_nothing(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """results.jsonl fails (ENOSPC from /dev/full) while a batch of skipped rows is written:
    exit 2 with the one-line error naming the export command, no request sent, and export
    writes every skipped row from the store."""
    sandbox = await sandbox_factory(daily_quota=1000)
    rows = 120
    note = "n" * 12_000  # 120 such rows pass the 1 MB buffer: the write itself fails
    manifest = write_csv(
        tmp_path / "m.csv",
        [(c, s, note) for c, s in campaigns(rows)],
        header=("campaign_id", "send_id", "note"),
    )
    code, _, err = await provisioner(*run_args(sandbox.url, tmp_path, str(manifest)))
    assert code == 0, err
    total = sandbox.ledger.total
    out = tmp_path / "out"
    shutil.rmtree(out)
    out.mkdir()
    code, _, err = await provisioner(
        *run_args(sandbox.url, tmp_path, str(manifest)), env=results_on_dev_full(tmp_path)
    )
    assert code == 2, err
    line = one_error_line(err)
    assert "No space left on device" in line
    assert sandbox.ledger.total == total  # every row skipped: nothing sent
    assert not (out / "results.jsonl").exists()
    await export(tmp_path, run_id_of(line), tmp_path / "exported")
    results, failures, deferred, summary = outputs(tmp_path / "exported")
    assert_invariant(tmp_path / "exported", rows)
    assert summary["exit_code"] == 2
    assert [r["status"] for r in results] == ["skipped"] * rows
    assert [r["note"] for r in results] == [note] * rows
    assert not failures
    assert not deferred


async def test_identities_and_lookups_run_off_the_loop_thread(
    sandbox_factory: SandboxFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seen index and the store's lookup of a run's batches run in a worker thread,
    never on the event loop's thread, and the re-run still skips every row."""
    sandbox = await sandbox_factory(daily_quota=10_000)
    manifest = write_csv(tmp_path / "m.csv", campaigns(1200))
    assert (await run_pipeline(settings_for(sandbox.url, tmp_path, manifest))).exit_code == 0
    threads: list[int] = []
    real_assign, real_lookup = SeenIndex.assign, SqliteReader.lookup_many

    def assign(self: SeenIndex, *args: Any) -> Any:
        threads.append(threading.get_ident())
        return real_assign(self, *args)

    def lookup(self: SqliteReader, *args: Any) -> Any:
        threads.append(threading.get_ident())
        return real_lookup(self, *args)

    monkeypatch.setattr(SeenIndex, "assign", assign)
    monkeypatch.setattr(SqliteReader, "lookup_many", lookup)
    result = await run_pipeline(settings_for(sandbox.url, tmp_path, manifest))
    assert result.counts["skipped"] == 1200
    assert len(threads) >= 6  # three batches of 512 rows, two calls each
    assert threading.get_ident() not in threads
