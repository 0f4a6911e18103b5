"""Unit tests for the Prometheus metrics file observer (no sockets, injected clock)."""

from __future__ import annotations

import dataclasses
import errno
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import prometheus_client.exposition
import pytest
from prometheus_client.parser import text_string_to_metric_families

from provisioner._outputs.metrics import LAST_SUCCESS, MetricsFile, check_metrics_path
from provisioner._outputs.observe import RunObserver, Snapshot, WorkspaceFigures
from provisioner.errors import OutputError

WS = "ws-1a2b3c4d5e"
NOW = 1_750_000_000.0
SUCCESS_EARLIER = 1_749_000_000.0

ALWAYS = {
    "provisioner_rows",
    "provisioner_requests",
    "provisioner_retries",
    "provisioner_http_429",
    "provisioner_run_duration_seconds",
    "provisioner_run_started_timestamp_seconds",
    "provisioner_run_finished",
    "provisioner_run_info",
    "provisioner_workspace_info",
}
#: The run's own figures: labelled with all its workspaces, not per workspace.
RUN_LEVEL = {
    "provisioner_run_duration_seconds",
    "provisioner_run_started_timestamp_seconds",
    "provisioner_run_finished",
    "provisioner_run_exit_code",
    "provisioner_run_info",
    LAST_SUCCESS,
}
WHEN_KNOWN = {
    "provisioner_quota_remaining",
    "provisioner_quota_limit",
    "provisioner_quota_reset_timestamp_seconds",
    "provisioner_rows_per_second",
}

Labels = frozenset[tuple[str, str]]


def snap(**overrides: object) -> Snapshot:
    """A mid-run snapshot with every optional figure known; ``overrides`` replace fields."""
    base = Snapshot(
        run_id="20250615T120000Z-abcd",
        manifest="campaigns.csv",
        workspace=WS,
        started_at=NOW - 12.5,
        elapsed_s=12.5,
        rows_done=10,
        counts={"created": 5, "duplicate": 1, "skipped": 2, "failed": 1, "deferred": 1},
        requests=9,
        retries=2,
        http_429=1,
        http_by_class={"2xx": 5, "4xx": 2, "5xx": 1},
        rows_per_s=0.8,
        fraction_read=0.5,
        eta_s=12.5,
        quota_limit=100,
        quota_remaining=95,
        quota_reset_at=NOW + 3600,
        paused_until=None,
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def final(exit_code: int, **overrides: object) -> Snapshot:
    """The snapshot ``close`` receives: finished, with ``exit_code``."""
    return snap(finished=True, exit_code=exit_code, **overrides)


def clock_at(t: float) -> Callable[[], float]:
    """A clock that always says ``t``."""
    return lambda: t


def metrics(path: Path) -> dict[str, dict[Labels, float]]:
    """The file's samples: metric name -> label set -> value (every family must be a gauge)."""
    out: dict[str, dict[Labels, float]] = {}
    for family in text_string_to_metric_families(path.read_text(encoding="utf-8")):
        assert family.type == "gauge", family.name
        for sample in family.samples:
            out.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return out


def ws(**labels: str) -> Labels:
    """A label set: workspace plus ``labels``."""
    return frozenset({"workspace": WS, **labels}.items())


def run(**labels: str) -> Labels:
    """A run-level label set: the run's workspaces plus ``labels``."""
    return frozenset({"workspaces": WS, **labels}.items())


def only(found: dict[str, dict[Labels, float]], name: str) -> float:
    """The single value of a metric labelled only with its workspace (or, for a run-level
    one, with the run's workspaces)."""
    labels = run() if name in RUN_LEVEL else ws()
    assert set(found[name]) == {labels}, found[name]
    return found[name][labels]


def test_update_writes_every_figure_with_its_labels(tmp_path: Path) -> None:
    """A mid-run update writes each metric, as a gauge, with the workspace label and values."""
    path = tmp_path / "provisioner.prom"
    MetricsFile(path, clock=clock_at(NOW)).update(snap())
    found = metrics(path)
    assert set(found) == ALWAYS | WHEN_KNOWN
    assert found["provisioner_rows"] == {
        ws(status="created"): 5,
        ws(status="duplicate"): 1,
        ws(status="skipped"): 2,
        ws(status="failed"): 1,
        ws(status="deferred"): 1,
    }
    assert found["provisioner_requests"] == {
        ws(**{"class": "2xx"}): 5,
        ws(**{"class": "4xx"}): 2,
        ws(**{"class": "5xx"}): 1,
        ws(**{"class": "none"}): 1,
    }
    assert only(found, "provisioner_retries") == 2
    assert only(found, "provisioner_http_429") == 1
    assert only(found, "provisioner_run_duration_seconds") == 12.5
    assert only(found, "provisioner_run_started_timestamp_seconds") == NOW - 12.5
    assert only(found, "provisioner_run_finished") == 0
    assert only(found, "provisioner_quota_remaining") == 95
    assert only(found, "provisioner_quota_limit") == 100
    assert only(found, "provisioner_quota_reset_timestamp_seconds") == NOW + 3600
    assert only(found, "provisioner_rows_per_second") == 0.8
    assert found["provisioner_run_info"] == {
        run(run_id="20250615T120000Z-abcd", manifest="campaigns.csv"): 1
    }
    assert found["provisioner_workspace_info"] == {ws(name=WS): 1}


def test_unknown_figures_are_absent_not_zero(tmp_path: Path) -> None:
    """Before the first answer: no quota, no rate, and zeros for every status and class."""
    path = tmp_path / "m.prom"
    early = snap(
        counts={},
        rows_done=0,
        requests=0,
        retries=0,
        http_429=0,
        http_by_class={},
        rows_per_s=None,
        quota_limit=None,
        quota_remaining=None,
        quota_reset_at=None,
    )
    MetricsFile(path).update(early)
    found = metrics(path)
    assert set(found) == ALWAYS
    assert set(found["provisioner_rows"].values()) == {0}
    assert len(found["provisioner_rows"]) == 5
    assert set(found["provisioner_requests"].values()) == {0}


def test_request_classes_add_up_to_the_requests_sent(tmp_path: Path) -> None:
    """Unusual classes (3xx) appear, and "none" counts the requests that got no answer."""
    path = tmp_path / "m.prom"
    MetricsFile(path).update(snap(requests=10, http_by_class={"2xx": 4, "3xx": 1, "5xx": 2}))
    requests = metrics(path)["provisioner_requests"]
    assert requests[ws(**{"class": "3xx"})] == 1
    assert requests[ws(**{"class": "none"})] == 3
    assert sum(requests.values()) == 10


def test_close_reports_finished_exit_code_and_success_time(tmp_path: Path) -> None:
    """close with exit code 0: finished 1, the exit code, and the clock's now as last success."""
    path = tmp_path / "m.prom"
    observer = MetricsFile(path, interval=0.5, clock=clock_at(NOW))
    observer.update(snap())
    assert "provisioner_run_exit_code" not in metrics(path)
    observer.close(final(0))
    found = metrics(path)
    assert only(found, "provisioner_run_finished") == 1
    assert only(found, "provisioner_run_exit_code") == 0
    assert only(found, LAST_SUCCESS) == NOW


def test_failed_run_without_history_has_no_last_success(tmp_path: Path) -> None:
    """A first run that fails leaves the last-success metric absent (never zero)."""
    path = tmp_path / "m.prom"
    MetricsFile(path, clock=clock_at(NOW)).close(final(1))
    found = metrics(path)
    assert only(found, "provisioner_run_exit_code") == 1
    assert LAST_SUCCESS not in found


def test_last_success_survives_a_later_failed_run(tmp_path: Path) -> None:
    """A success, then a run ending 3: every write of the second run keeps the first's time."""
    path = tmp_path / "m.prom"
    MetricsFile(path, clock=clock_at(SUCCESS_EARLIER)).close(final(0))
    second = MetricsFile(path, clock=clock_at(NOW))
    second.update(snap(run_id="second"))
    assert only(metrics(path), LAST_SUCCESS) == SUCCESS_EARLIER
    second.close(final(3, run_id="second"))
    found = metrics(path)
    assert only(found, "provisioner_run_exit_code") == 3
    assert only(found, LAST_SUCCESS) == SUCCESS_EARLIER
    MetricsFile(path, clock=clock_at(NOW + 60)).close(final(0, run_id="third"))
    assert only(metrics(path), LAST_SUCCESS) == NOW + 60


def test_last_success_carries_over_a_new_workspace_label(tmp_path: Path) -> None:
    """A rotated key changes the label, not the history: the old file's time is kept."""
    path = tmp_path / "m.prom"
    MetricsFile(path, clock=clock_at(SUCCESS_EARLIER)).close(final(0, workspace="ws-old0000000"))
    MetricsFile(path, clock=clock_at(NOW)).close(final(1))
    assert only(metrics(path), LAST_SUCCESS) == SUCCESS_EARLIER


@pytest.mark.parametrize(
    "old",
    [
        pytest.param(b"not metrics at all\n", id="text"),
        pytest.param(b"\xff\xfe\x00garbage", id="not-utf8"),
        # This one makes the parser raise IndexError rather than ValueError.
        pytest.param(b" { , =u P-TNTE-1PPaeYTEz", id="parser-indexerror"),
        pytest.param(f"{LAST_SUCCESS} NaN\n".encode(), id="nan"),
        pytest.param(f"{LAST_SUCCESS} +Inf\n".encode(), id="inf"),
        # A valid value, but in a file over 1 MiB: not ours, so not parsed.
        pytest.param(
            f"{LAST_SUCCESS} 1749000000\n".encode() + b"# padding\n" * 120_000, id="too-large"
        ),
        pytest.param(b"", id="empty"),
    ],
)
def test_an_unusable_old_file_is_ignored_and_replaced(tmp_path: Path, old: bytes) -> None:
    """A corrupt, foreign or empty old file means no last success, not an error."""
    path = tmp_path / "m.prom"
    path.write_bytes(old)
    MetricsFile(path, clock=clock_at(NOW)).close(final(1))
    found = metrics(path)
    assert LAST_SUCCESS not in found
    assert only(found, "provisioner_run_finished") == 1


def test_an_old_file_that_is_a_folder_is_ignored_on_read(tmp_path: Path) -> None:
    """Reading the old value never raises; only the write itself may fail."""
    path = tmp_path / "m.prom"
    path.mkdir()
    with pytest.raises(IsADirectoryError):
        MetricsFile(path).update(snap())
    assert os.listdir(tmp_path) == ["m.prom"]  # no temporary left beside it


def test_label_values_round_trip(tmp_path: Path) -> None:
    """Quotes, backslashes, newlines and non-ASCII in the manifest name are escaped, not lost."""
    path = tmp_path / "m.prom"
    name = 'data/"q3"\\été\nlist.csv'
    MetricsFile(path).update(snap(manifest=name))
    (labels,) = metrics(path)["provisioner_run_info"]
    assert dict(labels)["manifest"] == name


def test_writes_leave_only_the_metrics_file(tmp_path: Path) -> None:
    """After many updates and the close, the folder holds the metrics file and nothing else."""
    path = tmp_path / "m.prom"
    observer = MetricsFile(path)
    for n in range(5):
        observer.update(snap(rows_done=n))
    observer.close(final(0))
    assert os.listdir(tmp_path) == ["m.prom"]


def test_the_file_is_replaced_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Until the rename, PATH holds the previous complete file and the new text is elsewhere."""
    path = tmp_path / "m.prom"
    observer = MetricsFile(path)
    observer.update(snap(retries=1))
    seen: list[tuple[float, float]] = []
    real_rename = os.replace

    def spy(src: str | Path, dst: str | Path) -> None:
        assert str(dst) == str(path)
        assert src != dst
        assert Path(src).parent == tmp_path  # same filesystem: the rename is atomic
        before = only(metrics(path), "provisioner_retries")
        after = only(metrics(Path(src)), "provisioner_retries")
        seen.append((before, after))
        real_rename(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    observer.update(snap(retries=2))
    assert seen == [(1, 2)]
    assert only(metrics(path), "provisioner_retries") == 2


def test_a_failing_write_raises_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disk full mid-write: OSError reaches the caller, the old file stays, no temporary left."""
    path = tmp_path / "m.prom"
    observer = MetricsFile(path)
    observer.update(snap(retries=1))

    def full(*args: object, **kwargs: object) -> bytes:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(prometheus_client.exposition, "generate_latest", full)
    with pytest.raises(OSError, match="No space left"):
        observer.update(snap(retries=2))
    assert os.listdir(tmp_path) == ["m.prom"]
    assert only(metrics(path), "provisioner_retries") == 1


def test_a_removed_folder_raises(tmp_path: Path) -> None:
    """The folder vanishing mid-run surfaces as OSError (the runner logs observer failures)."""
    folder = tmp_path / "textfile"
    folder.mkdir()
    observer = MetricsFile(folder / "m.prom")
    observer.update(snap())
    (folder / "m.prom").unlink()
    folder.rmdir()
    with pytest.raises(FileNotFoundError):
        observer.close(final(0))


def test_it_is_a_run_observer(tmp_path: Path) -> None:
    """MetricsFile fits the runner's RunObserver seam; interval defaults to 15 s."""
    observer: RunObserver = MetricsFile(tmp_path / "m.prom")
    assert observer.interval == 15.0
    assert MetricsFile(tmp_path / "m.prom", interval=0.25).interval == 0.25


def test_check_accepts_a_writable_folder(tmp_path: Path) -> None:
    """A writable existing folder passes, and the probe leaves nothing behind."""
    check_metrics_path(tmp_path / "provisioner.prom")
    (tmp_path / "provisioner.prom").write_text("old")
    check_metrics_path(tmp_path / "provisioner.prom")
    assert os.listdir(tmp_path) == ["provisioner.prom"]


def test_check_refuses_a_missing_folder(tmp_path: Path) -> None:
    """A missing folder: one line naming the path and the fix; nothing is created."""
    path = tmp_path / "nope" / "provisioner.prom"
    with pytest.raises(OutputError) as info:
        check_metrics_path(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    assert "does not exist" in message
    assert "--metrics-file" in message
    assert not (tmp_path / "nope").exists()


def test_check_refuses_a_file_as_folder(tmp_path: Path) -> None:
    """A parent that is a file is named as such."""
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is not a folder"):
        check_metrics_path(tmp_path / "file" / "provisioner.prom")


def test_check_refuses_a_folder_as_path(tmp_path: Path) -> None:
    """PATH naming a folder would fail every rename: refused up front."""
    with pytest.raises(OutputError, match="it is a folder"):
        check_metrics_path(tmp_path)


def test_check_refuses_a_folder_that_takes_no_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder where files cannot be created (permissions, read-only mount) is refused."""

    def refuse(*args: object, **kwargs: object) -> tuple[int, str]:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("provisioner._outputs.metrics.tempfile.mkstemp", refuse)
    with pytest.raises(OutputError) as info:
        check_metrics_path(tmp_path / "provisioner.prom")
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "provisioner.prom") in message
    assert "Permission denied" in message
    assert "not writable" in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through file permissions")
def test_check_refuses_a_read_only_folder(tmp_path: Path) -> None:
    """The real permission bits: a read-only folder is refused."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="not writable"):
            check_metrics_path(folder / "provisioner.prom")
    finally:
        folder.chmod(0o700)


def two_workspaces() -> Snapshot:
    """A snapshot of a run over two workspaces with different figures."""
    us = WorkspaceFigures(
        name="us",
        counts={"created": 4, "duplicate": 0, "skipped": 1, "failed": 0, "deferred": 0},
        requests=5, retries=1, http_429=0, http_by_class={"2xx": 4, "5xx": 1},
        rows_per_s=2.0, quota_limit=100, quota_remaining=96, quota_reset_at=NOW + 60,
    )  # fmt: skip
    eu = WorkspaceFigures(
        name="eu",
        counts={"created": 3, "duplicate": 0, "skipped": 0, "failed": 0, "deferred": 2},
        requests=4, retries=0, http_429=1, http_by_class={"2xx": 3, "4xx": 1},
        rows_per_s=1.5, quota_limit=3, quota_remaining=0, quota_reset_at=NOW + 120,
    )  # fmt: skip
    return snap(by_workspace={"ws-us": us, "ws-eu": eu}, finished=True, exit_code=3)


def test_each_workspace_has_its_own_figures(tmp_path: Path) -> None:
    """Two workspaces: every row, request and quota gauge is per workspace with that
    workspace's own values; run-level gauges carry the run's workspaces, not one of them."""
    path = tmp_path / "m.prom"
    MetricsFile(path, clock=clock_at(NOW)).close(two_workspaces())
    found = metrics(path)

    def per(name: str, **labels: str) -> dict[str, float]:
        return {
            dict(k)["workspace"]: v
            for k, v in found[name].items()
            if labels.items() <= dict(k).items()
        }

    assert per("provisioner_rows", status="created") == {"ws-us": 4, "ws-eu": 3}
    assert per("provisioner_rows", status="deferred") == {"ws-us": 0, "ws-eu": 2}
    assert per("provisioner_requests", **{"class": "2xx"}) == {"ws-us": 4, "ws-eu": 3}
    assert per("provisioner_requests", **{"class": "none"}) == {"ws-us": 0, "ws-eu": 0}
    assert per("provisioner_retries") == {"ws-us": 1, "ws-eu": 0}
    assert per("provisioner_http_429") == {"ws-us": 0, "ws-eu": 1}
    assert per("provisioner_quota_limit") == {"ws-us": 100, "ws-eu": 3}
    assert per("provisioner_quota_remaining") == {"ws-us": 96, "ws-eu": 0}
    assert per("provisioner_quota_reset_timestamp_seconds") == {
        "ws-us": NOW + 60,
        "ws-eu": NOW + 120,
    }
    assert per("provisioner_rows_per_second") == {"ws-us": 2.0, "ws-eu": 1.5}
    assert found["provisioner_workspace_info"] == {
        frozenset({"workspace": "ws-us", "name": "us"}.items()): 1,
        frozenset({"workspace": "ws-eu", "name": "eu"}.items()): 1,
    }
    both = frozenset({"workspaces": "ws-eu,ws-us"}.items())
    assert found["provisioner_run_exit_code"] == {both: 3}
    assert found["provisioner_run_finished"] == {both: 1}
    assert set(found["provisioner_run_duration_seconds"]) == {both}


@pytest.mark.parametrize("case", ["one-workspace", "two-workspaces", "early"])
def test_promtool_accepts_the_file(tmp_path: Path, case: str, promtool: str) -> None:
    """`promtool check metrics` finds no problem (nor lint warning) in the file."""
    path = tmp_path / "m.prom"
    observer = MetricsFile(path, clock=clock_at(NOW))
    if case == "two-workspaces":
        observer.close(two_workspaces())
    elif case == "early":
        observer.update(snap(quota_limit=None, quota_remaining=None, rows_per_s=None))
    else:
        observer.close(final(0))
    with path.open("rb") as stdin:
        done = subprocess.run(
            [promtool, "check", "metrics"], stdin=stdin, capture_output=True, timeout=60
        )
    assert done.returncode == 0, done.stdout + done.stderr
    assert not done.stdout.strip(), done.stdout  # no lint warning either
    assert not done.stderr.strip(), done.stderr
