"""Unit tests for the output folder and the four output files (no sockets)."""

from __future__ import annotations

import errno
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provisioner._core.models import Columns, Outcome, RawRow, Row, Skip, Status
from provisioner._core.times import iso
from provisioner._manifest.reader import Manifest
from provisioner._outputs.files import FileSink, OutputFolder
from provisioner._pipeline.outcomes import skipped
from provisioner._state.store import Prior
from provisioner.errors import OutputError

FINAL = {"results.jsonl", "failures.jsonl", "deferred.csv", "summary.json"}
CSV_HEADER = ("campaign_id", "send_id", "note")


def folder_at(path: Path) -> OutputFolder:
    """A prepared output folder at ``path``."""
    folder = OutputFolder(path)
    folder.prepare()
    return folder


def lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file, in order."""
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def cols(campaign_id: str = "c1", send_id: str = "s1", **extra: object) -> Columns:
    """Manifest columns: campaign_id, send_id, then ``extra``."""
    return (("campaign_id", campaign_id), ("send_id", send_id), *extra.items())


# --- OutputFolder ------------------------------------------------------------------------


def test_prepare_creates_parents_and_leaves_no_probe(tmp_path: Path) -> None:
    """prepare creates missing parents and removes its probe file."""
    target = tmp_path / "a" / "b" / "out"
    folder = folder_at(target)
    assert target.is_dir()
    assert [p.name for p in target.iterdir()] == [".provisioner.lock"]  # held till release
    folder.release()
    assert list(target.iterdir()) == []


def test_prepare_refuses_unwritable_folder(tmp_path: Path) -> None:
    """A folder that cannot be created (its parent is a file) is an OutputError naming it."""
    (tmp_path / "afile").write_text("x")
    target = tmp_path / "afile" / "out"
    with pytest.raises(OutputError) as info:
        OutputFolder(target).prepare()
    assert str(target) in str(info.value)
    assert "Not a directory" in str(info.value)


def test_prepare_refuses_a_file_in_place_of_the_folder(tmp_path: Path) -> None:
    """An --out path that is a regular file is refused with a clear message."""
    (tmp_path / "out").write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        OutputFolder(tmp_path / "out").prepare()


@pytest.mark.parametrize(
    "name", ["results.jsonl", "failures.jsonl", "deferred.csv", "summary.json"]
)
def test_prepare_refuses_an_output_name_held_by_a_folder(tmp_path: Path, name: str) -> None:
    """A folder where an output file goes could not be replaced at commit, after sending:
    prepare refuses it up front, naming it."""
    (tmp_path / "out" / name).mkdir(parents=True)
    with pytest.raises(OutputError, match="a folder has that name") as info:
        OutputFolder(tmp_path / "out").prepare()
    assert name in str(info.value)


# --- routing and fields ------------------------------------------------------------------


def test_outcomes_are_routed_by_status_with_stable_fields(tmp_path: Path) -> None:
    """created/duplicate/skipped go to results, failed to failures, deferred to deferred.csv."""
    sink = FileSink(folder_at(tmp_path), deferred_header=CSV_HEADER)
    sink.write(Outcome(2, Status.CREATED, "c1", "s1", cols(note="n"), 1, 201, 12.345))
    sink.write(Outcome(3, Status.DUPLICATE, "c1", "s1", cols(note="n"), duplicate_of=2))
    sink.write(
        Outcome(
            4, Status.SKIPPED, "c2", "s2", cols("c2", "s2", note="n"), created_run="r1",
            created_at=1714564800.25,
        )
    )  # fmt: skip
    sink.write(
        Outcome(
            5, Status.FAILED, "c3", None, cols("c3", "", note="n"), 3, 503, 8.0,
            error="server_error", message="Braze answered 503", retryable=True,
        )
    )  # fmt: skip
    sink.write(Outcome(6, Status.DEFERRED, "c4", "s4", cols("c4", "s4", note="n"), reason="quota"))
    sink.commit({"counts": {"created": 1}})
    results = tmp_path.joinpath("results.jsonl").read_bytes().splitlines()
    assert results[0] == (
        b'{"line":2,"campaign_id":"c1","send_id":"s1","status":"created","attempts":1,'
        b'"http_status":201,"latency_ms":12.3,"note":"n"}'
    )
    assert orjson.loads(results[1])["duplicate_of"] == 2
    skipped = orjson.loads(results[2])
    assert (skipped["created_run"], skipped["created_at"]) == ("r1", "2024-05-01T12:00:00.250Z")
    assert list(skipped) == [
        "line", "campaign_id", "send_id", "status", "attempts", "http_status", "latency_ms",
        "created_run", "created_at", "note",
    ]  # fmt: skip
    assert lines(tmp_path / "failures.jsonl") == [
        {
            "line": 5, "campaign_id": "c3", "send_id": None, "status": "failed",
            "error": "server_error", "message": "Braze answered 503", "http_status": 503,
            "attempts": 3, "retryable": True, "field": None, "note": "n",
        }
    ]  # fmt: skip
    assert tmp_path.joinpath("deferred.csv").read_bytes() == (
        b"campaign_id,send_id,note\r\nc4,s4,n\r\n"
    )
    summary = orjson.loads(tmp_path.joinpath("summary.json").read_bytes())
    assert summary.pop("files").keys() == {"results.jsonl", "failures.jsonl", "deferred.csv"}
    assert summary == {"counts": {"created": 1}}


def test_colliding_pass_through_columns_are_prefixed(tmp_path: Path) -> None:
    """Columns named like output fields become input.<name>; nothing is overwritten."""
    sink = FileSink(folder_at(tmp_path), deferred_header=None)
    columns = cols(status="mine", line="L", **{"input.status": "other", "error": "e"})
    sink.write(Outcome(2, Status.CREATED, "c1", "s1", columns, 1, 201, 1.0))
    sink.write(Outcome(3, Status.FAILED, "c1", "s1", columns, error="in_doubt", message="m"))
    sink.commit({})
    (result,) = lines(tmp_path / "results.jsonl")
    assert result["status"] == "created"
    assert result["line"] == 2
    assert (result["input.status"], result["input.line"], result["error"]) == ("other", "L", "e")
    assert result["input.input.status"] == "mine"  # "input.status" is another column's name
    (failure,) = lines(tmp_path / "failures.jsonl")
    assert (failure["error"], failure["input.error"], failure["input.line"]) == (
        "in_doubt",
        "e",
        "L",
    )


def test_collision_names_do_not_depend_on_column_order(tmp_path: Path) -> None:
    """The renamed key of a colliding column is the same whatever the column order."""
    sink = FileSink(folder_at(tmp_path), deferred_header=None)
    first: Columns = (("input.status", "other"), ("status", "mine"), ("campaign_id", "c1"))
    second: Columns = (("status", "mine"), ("campaign_id", "c1"), ("input.status", "other"))
    for columns in (first, second):
        sink.write(Outcome(2, Status.CREATED, "c1", None, columns, 1, 201, 1.0))
    sink.commit({})
    for result in lines(tmp_path / "results.jsonl"):
        assert (result["input.status"], result["input.input.status"]) == ("other", "mine")


def test_non_string_ids_are_kept_in_failures(tmp_path: Path) -> None:
    """A refused non-string campaign_id is kept as input.campaign_id in failures.jsonl."""
    sink = FileSink(folder_at(tmp_path), deferred_header=None)
    columns: Columns = (("campaign_id", 42), ("send_id", None), ("x", [1]))
    sink.write(
        Outcome(
            1, Status.FAILED, None, None, columns, error="wrong_type", message="m",
            field="campaign_id",
        )
    )  # fmt: skip
    sink.commit({})
    (failure,) = lines(tmp_path / "failures.jsonl")
    assert (failure["campaign_id"], failure["input.campaign_id"], failure["x"]) == (None, 42, [1])
    assert failure["field"] == "campaign_id"
    assert "input.send_id" not in failure


# --- atomicity ---------------------------------------------------------------------------


def test_nothing_final_before_commit_and_all_four_after(tmp_path: Path) -> None:
    """Before commit only hidden temporaries exist; commit leaves exactly the four files."""
    sink = FileSink(folder_at(tmp_path), deferred_header=CSV_HEADER)
    sink.write(Outcome(2, Status.CREATED, "c1", "s1", cols(note="n"), 1, 201, 1.0))
    names = {p.name for p in tmp_path.iterdir()}
    assert not names & FINAL
    assert all(name.startswith(".") for name in names)
    sink.commit({})
    assert {p.name for p in tmp_path.iterdir()} == FINAL


def test_abort_leaves_nothing_and_keeps_previous_files(tmp_path: Path) -> None:
    """abort removes the temporaries and leaves an earlier run's final files alone."""
    tmp_path.joinpath("summary.json").write_text("{}")
    for header in (CSV_HEADER, None):
        sink = FileSink(folder_at(tmp_path), deferred_header=header)
        sink.write(Outcome(2, Status.DEFERRED, "c1", "s1", cols(note="n")))
        sink.abort()
        sink.abort()  # idempotent
        assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


@pytest.mark.parametrize(
    ("header", "deferred"),
    [(CSV_HEADER, b"campaign_id,send_id,note\r\n"), (None, b"campaign_id,send_id\r\n")],
)
def test_all_four_files_are_written_when_empty(
    tmp_path: Path, header: tuple[str, ...] | None, deferred: bytes
) -> None:
    """With no rows at all, commit still writes the four files (deferred.csv has a header)."""
    FileSink(folder_at(tmp_path), deferred_header=header).commit({"rows": 0})
    assert {p.name for p in tmp_path.iterdir()} == FINAL
    assert tmp_path.joinpath("results.jsonl").read_bytes() == b""
    assert tmp_path.joinpath("failures.jsonl").read_bytes() == b""
    assert tmp_path.joinpath("deferred.csv").read_bytes() == deferred


def test_write_after_commit_is_an_error(tmp_path: Path) -> None:
    """A sink is finished after commit: further writes are a programming error."""
    sink = FileSink(folder_at(tmp_path), deferred_header=None)
    sink.commit({})
    with pytest.raises(RuntimeError):
        sink.write(Outcome(2, Status.CREATED, "c1", "s1"))


def test_commit_failure_is_an_output_error_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk error at commit raises OutputError and removes the temporaries."""
    sink = FileSink(folder_at(tmp_path), deferred_header=None)
    sink.write(Outcome(2, Status.CREATED, "c1", "s1", cols(), 1, 201, 1.0))

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("provisioner._outputs.files.os.fsync", full)
    with pytest.raises(OutputError, match="No space left"):
        sink.commit({})
    assert list(tmp_path.iterdir()) == []


def test_write_failure_is_an_output_error(tmp_path: Path) -> None:
    """A disk error while writing a row becomes an OutputError naming the folder."""

    class Full:
        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    sink = FileSink(folder_at(tmp_path), deferred_header=None)
    sink._results = Full()  # type: ignore[assignment]
    with pytest.raises(OutputError, match=str(tmp_path)):
        sink.write(Outcome(2, Status.CREATED, "c1", "s1"))
    sink.abort()


# --- deferred.csv ------------------------------------------------------------------------


def read_manifest(path: Path) -> list[Columns]:
    """The columns of every record of a manifest file, asserting each parses."""
    with Manifest(str(path)) as manifest:
        records = list(manifest)
    assert all(isinstance(r, RawRow) for r in records), records
    return [r.columns for r in records if isinstance(r, RawRow)]


def test_deferred_csv_is_raw_and_reorders_by_header(tmp_path: Path) -> None:
    """Formula-like values stay raw; columns out of header order are put in order."""
    sink = FileSink(folder_at(tmp_path), deferred_header=CSV_HEADER)
    sink.write(Outcome(2, Status.DEFERRED, "c1", None, (("note", "=1+1"), ("campaign_id", "c1"))))
    sink.commit({})
    assert tmp_path.joinpath("deferred.csv").read_bytes() == (
        b"campaign_id,send_id,note\r\nc1,,=1+1\r\n"
    )


def test_deferred_from_jsonl_builds_union_header(tmp_path: Path) -> None:
    """For JSONL rows the header is campaign_id, send_id, then keys by first appearance."""
    sink = FileSink(folder_at(tmp_path), deferred_header=None)
    sink.write(Outcome(1, Status.DEFERRED, "c1", None, (("b", 1), ("campaign_id", "c1"))))
    sink.write(Outcome(2, Status.CREATED, "c9", "x", (("campaign_id", "c9"), ("z", "no"))))
    sink.write(
        Outcome(
            3, Status.DEFERRED, "c2", "s2",
            (("campaign_id", "c2"), ("a", None), ("send_id", "s2"), ("b", {"k": [True]})),
        )
    )  # fmt: skip
    sink.commit({})
    assert tmp_path.joinpath("deferred.csv").read_bytes() == (
        b'campaign_id,send_id,b,a\r\nc1,,1,\r\nc2,s2,"{""k"":[true]}",\r\n'
    )
    assert read_manifest(tmp_path / "deferred.csv") == [
        (("campaign_id", "c1"), ("send_id", ""), ("b", "1"), ("a", "")),
        (("campaign_id", "c2"), ("send_id", "s2"), ("b", '{"k":[true]}'), ("a", "")),
    ]
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


_TEXT = st.text(st.characters(codec="utf-8"), max_size=20)
_NAMES = st.lists(
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=8).filter(
        lambda n: n not in ("campaign_id", "send_id") and not n.startswith("\ufeff")
    ),
    max_size=3,
    unique=True,
)


@settings(max_examples=100, deadline=None)
@given(names=_NAMES, data=st.data())
def test_deferred_csv_round_trips_through_manifest(names: list[str], data: st.DataObject) -> None:
    """Rows written to deferred.csv by FileSink read back by Manifest with identical columns."""
    header = ("campaign_id", "send_id", *names)
    width = len(header)
    body = data.draw(st.lists(st.lists(_TEXT, min_size=width, max_size=width), max_size=6))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        sink = FileSink(folder_at(out), deferred_header=header)
        expected = [tuple(zip(header, values, strict=True)) for values in body]
        for line, columns in enumerate(expected, 2):
            sink.write(Outcome(line, Status.DEFERRED, columns[0][1], None, columns))
        sink.commit({})
        assert read_manifest(out / "deferred.csv") == expected


@settings(max_examples=100, deadline=None)
@given(
    body=st.lists(
        st.dictionaries(st.text(st.characters(codec="utf-8"), max_size=6), _TEXT, max_size=3),
        max_size=6,
    )
)
def test_deferred_from_jsonl_round_trips_string_values(body: list[dict[str, str]]) -> None:
    """String-valued JSONL rows come back from deferred.csv with the same values per key."""
    rows = [{"campaign_id": "c", "send_id": "s", **row} for row in body]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        sink = FileSink(folder_at(out), deferred_header=None)
        for line, row in enumerate(rows, 1):
            sink.write(Outcome(line, Status.DEFERRED, "c", "s", tuple(row.items())))
        sink.commit({})
        back = [dict(columns) for columns in read_manifest(out / "deferred.csv")]
        assert [
            {k: v for k, v in got.items() if k in row} for got, row in zip(back, rows, strict=True)
        ] == rows
        assert all(
            v == ""
            for got, row in zip(back, rows, strict=True)
            for k, v in got.items()
            if k not in row
        )


@settings(max_examples=2000)
@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
def test_iso_matches_datetime_to_the_millisecond(epoch: float) -> None:
    """The one ISO formatter writes exactly what datetime.isoformat does (ms, truncated)."""
    expected = datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
    assert iso(epoch) == expected


# --- skipped rows in batches -------------------------------------------------------------

_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),  # beyond 64 bits: the stdlib fallback
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),  # lone surrogates included: orjson refuses them
    st.lists(st.integers(), max_size=2),
)
_SKIP_NAMES = st.sampled_from(
    ["note", "status", "created_run", "created_at", "input.status", "line", "campaign_id",
     "send_id", "ü"]
)  # fmt: skip


@settings(max_examples=50, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.lists(st.tuples(_SKIP_NAMES, _VALUES), max_size=4),
            st.one_of(st.none(), st.text(max_size=5)),
            st.text(max_size=5),
            st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False),
        ),
        max_size=6,
    )
)
def test_skipped_batch_writes_what_per_row_writes_would(
    rows: list[tuple[list[tuple[str, object]], str | None, str, float]],
) -> None:
    """write_skipped writes, byte for byte and in order, the results lines that write()
    writes for each row's outcomes.skipped Outcome (collisions, odd values included)."""
    skips: list[Skip] = []
    for line, (extra, send_id, run, at) in enumerate(rows, 2):
        columns: Columns = (("campaign_id", f"c{line}"), *extra)
        row = Row(line, f"c{line}", send_id, columns)
        skips.append((row, (row.campaign_id, f"s:{send_id}"), send_id, run, at, None))
    written: list[bytes] = []
    for batched in (True, False):
        with tempfile.TemporaryDirectory() as tmp:
            sink = FileSink(folder_at(Path(tmp)), deferred_header=None)
            if batched:
                sink.write_skipped(skips)
            else:
                for row, _, send_id, run, at, _ in skips:
                    sink.write(skipped(row, send_id, Prior("created", run, at, send_id)))
            sink.commit({})
            written.append((Path(tmp) / "results.jsonl").read_bytes())
    assert written[0] == written[1]
    assert written[0].count(b"\n") == len(rows)


def test_skipped_batch_write_failure_is_an_output_error(tmp_path: Path) -> None:
    """A disk error while writing a batch of skipped rows is an OutputError naming the
    folder, like a failed write() (the runner then stops as for any output failure)."""

    class Full:
        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    sink = FileSink(folder_at(tmp_path), deferred_header=None)
    sink._results = Full()  # type: ignore[assignment]
    row = Row(2, "c1", "s1", cols())
    with pytest.raises(OutputError, match=str(tmp_path)):
        sink.write_skipped([(row, ("c1", "s:s1"), "s1", "run-0", 1.5, None)])
    sink.abort()
    with pytest.raises(RuntimeError):  # after abort, as for write()
        sink.write_skipped([])
