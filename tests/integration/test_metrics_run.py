"""End to end: a real run over loopback with the metrics file observer, checked against
summary.json, which is the run's own account of the same figures."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from provisioner._outputs.metrics import LAST_SUCCESS, MetricsFile
from provisioner._outputs.observe import Snapshot
from provisioner.api import run_pipeline
from provisioner.sandbox.server import FaultRule, Sandbox, workspace_label
from tests.conftest import SandboxFactory

from .helpers import KEY, campaigns, outputs, settings_for, write_csv
from .test_workspaces import manifest_for_both, two_workspaces

Found = dict[str, dict[frozenset[tuple[str, str]], float]]


def metrics(path: Path) -> Found:
    """The file's samples: metric name -> label set -> value."""
    out: Found = {}
    for family in text_string_to_metric_families(path.read_text(encoding="utf-8")):
        for sample in family.samples:
            out.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return out


def by(found: Found, name: str, label: str) -> dict[str, float]:
    """One labelled metric as {label value: value}."""
    return {dict(labels)[label]: value for labels, value in found[name].items()}


def one(found: Found, name: str) -> float:
    """The single value of a metric that has only the workspace label."""
    (value,) = found[name].values()
    return value


def epoch(iso: str) -> float:
    """summary.json's ISO-8601 UTC time as epoch seconds."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class RecordingMetricsFile(MetricsFile):
    """A MetricsFile that also parses what every mid-run update left on disk."""

    def __init__(self, path: Path, *, interval: float, clock: Callable[[], float]) -> None:
        super().__init__(path, interval=interval, clock=clock)
        self.mid_run: list[Found] = []

    def update(self, snapshot: Snapshot) -> None:
        super().update(snapshot)
        self.mid_run.append(metrics(self.path))


async def test_metrics_file_matches_the_summary(sandbox: Sandbox, tmp_path: Path) -> None:
    """Created, duplicate, invalid, 400, retried and quota-deferred rows: every figure in the
    final metrics file equals summary.json, and the API key is nowhere in it."""
    sandbox.add_faults(
        [
            FaultRule(action="status", status=503, times=2),
            FaultRule(action="status", status=400, campaign_id="c000003"),
        ]
    )
    rows = [*campaigns(10), ("", "s-empty"), ("c-long", "x" * 65), ("c000001", "s000001")]
    manifest = write_csv(tmp_path / "m.csv", rows)
    settings = settings_for(sandbox.url, tmp_path, manifest, quota=5, max_wait=0)
    path = tmp_path / "textfile" / "provisioner.prom"
    path.parent.mkdir()

    result = await run_pipeline(settings, observers=[MetricsFile(path, interval=0.05)])

    _, _, _, summary = outputs(tmp_path / "out")
    counts = summary["counts"]
    assert counts["created"] > 0
    assert counts["deferred"] > 0
    assert counts["failed"] >= 2
    assert counts["duplicate"] == 1
    assert result.exit_code == summary["exit_code"] == 1

    text = path.read_text(encoding="utf-8")
    assert KEY not in text
    found = metrics(path)
    labels = {label for series in found.values() for key in series for label in key}
    assert ("workspace", settings.api_key.label) in labels
    assert by(found, "provisioner_rows", "status") == counts
    requests = by(found, "provisioner_requests", "class")
    assert requests.pop("none") == 0  # every request got an HTTP answer
    assert requests == {"2xx": 0, "4xx": 0, "5xx": 0, **summary["http_by_class"]}
    assert sum(requests.values()) == summary["requests"]
    assert requests["5xx"] == 2
    # Retries count requests sent again; a retry the spent quota deferred was never sent.
    assert one(found, "provisioner_retries") == summary["retries"] <= 2
    assert one(found, "provisioner_http_429") == summary["http_429"]
    assert one(found, "provisioner_run_finished") == 1
    assert one(found, "provisioner_run_exit_code") == 1
    assert LAST_SUCCESS not in found  # exit 1 and no earlier file
    # The final snapshot is taken just after summary.json is written: a few ms later.
    duration = one(found, "provisioner_run_duration_seconds")
    assert summary["duration_s"] - 0.0005 <= duration <= summary["duration_s"] + 0.5
    started = one(found, "provisioner_run_started_timestamp_seconds")
    assert 0 <= started - epoch(summary["started_at"]) < 0.001  # summary keeps milliseconds
    quota = summary["quota"]
    assert one(found, "provisioner_quota_limit") == quota["limit"]
    assert one(found, "provisioner_quota_remaining") == quota["remaining"]
    reset = one(found, "provisioner_quota_reset_timestamp_seconds")
    assert 0 <= reset - epoch(quota["reset_at"]) < 0.001
    assert one(found, "provisioner_rows_per_second") > 0
    ((info_labels, info),) = found["provisioner_run_info"].items()
    assert info == 1
    assert dict(info_labels)["run_id"] == summary["run_id"] == result.run_id
    assert dict(info_labels)["manifest"] == summary["manifest"]
    assert os.listdir(path.parent) == ["provisioner.prom"]  # no temporary left behind


async def test_mid_run_writes_are_complete_and_grow(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """During a run held up by a 429 pause and a slow answer, every write is a whole file
    of an unfinished run whose row counts only grow; the close records the success."""
    sandbox = await sandbox_factory(window_seconds=1)
    sandbox.add_faults(
        [
            FaultRule(action="rate_limit", times=1),
            FaultRule(action="delay", delay_ms=300, campaign_id="c000005"),
        ]
    )
    manifest = write_csv(tmp_path / "m.csv", campaigns(8))
    path = tmp_path / "provisioner.prom"
    observer = RecordingMetricsFile(path, interval=0.05, clock=lambda: 1_750_000_000.0)

    result = await run_pipeline(
        settings_for(sandbox.url, tmp_path, manifest, max_wait=5), observers=[observer]
    )

    assert result.exit_code == 0
    assert observer.mid_run, "the 300 ms answer spans several 50 ms intervals"
    done = [sum(by(found, "provisioner_rows", "status").values()) for found in observer.mid_run]
    assert done == sorted(done)
    for found in observer.mid_run:
        assert one(found, "provisioner_run_finished") == 0
        assert "provisioner_run_exit_code" not in found
        assert LAST_SUCCESS not in found
    _, _, _, summary = outputs(tmp_path / "out")
    found = metrics(path)
    assert one(found, "provisioner_http_429") == summary["http_429"] == 1
    assert by(found, "provisioner_rows", "status") == summary["counts"]
    assert one(found, "provisioner_run_exit_code") == 0
    assert one(found, LAST_SUCCESS) == 1_750_000_000.0


async def test_a_failed_run_keeps_the_last_success(sandbox: Sandbox, tmp_path: Path) -> None:
    """A successful run, then one with an invalid row: the second file still carries the
    first run's success time, next to its own exit code 1."""
    path = tmp_path / "provisioner.prom"
    good = write_csv(tmp_path / "good.csv", campaigns(3))
    first = await run_pipeline(
        settings_for(sandbox.url, tmp_path, good),
        observers=[MetricsFile(path, clock=lambda: 1_700_000_000.0)],
    )
    assert first.exit_code == 0
    bad = write_csv(tmp_path / "bad.csv", [*campaigns(3, prefix="d"), ("", "s-empty")])
    second = await run_pipeline(
        settings_for(sandbox.url, tmp_path, bad),
        observers=[MetricsFile(path, clock=lambda: 1_800_000_000.0)],
    )
    assert second.exit_code == 1
    found = metrics(path)
    assert one(found, "provisioner_run_exit_code") == 1
    assert one(found, LAST_SUCCESS) == pytest.approx(1_700_000_000.0)
    ((info_labels, _),) = found["provisioner_run_info"].items()
    assert dict(info_labels)["run_id"] == second.run_id


async def test_each_workspace_gets_its_own_figures(
    sandbox_factory: SandboxFactory, tmp_path: Path, promtool: str
) -> None:
    """A run over two workspaces (us, and eu capped at 3): the file read back has, per
    workspace, that workspace's own rows, requests, retries and quota window, as
    the sandbox and summary.json count them; run-level gauges name both workspaces; and
    promtool finds nothing to say about it."""
    sandbox = await sandbox_factory(api_keys=("key-us", "key-eu"), daily_quota=50)
    sandbox.add_faults(
        [
            # On us's campaigns: eu's figures must stay clear of them. (A 429 here would
            # say the window is spent: per-workspace 429s are in the unit tests.)
            FaultRule(action="status", status=503, times=1, campaign_id="c0001"),
            FaultRule(action="status", status=400, times=1, campaign_id="c0003"),
        ]
    )
    manifest = manifest_for_both(tmp_path, 10)
    path = tmp_path / "provisioner.prom"
    result = await run_pipeline(
        two_workspaces(sandbox.url, tmp_path, manifest, max_wait=5),
        observers=[MetricsFile(path, interval=0.05)],
    )
    assert result.exit_code == 1  # us's 400; eu's last 2 rows wait for its next window
    _, _, _, summary = outputs(tmp_path / "out")
    us, eu = workspace_label("key-us"), workspace_label("key-eu")
    found = metrics(path)

    def per(name: str, **labels: str) -> dict[str, float]:
        return {
            dict(key)["workspace"]: value
            for key, value in found[name].items()
            if labels.items() <= dict(key).items()
        }

    assert per("provisioner_rows", status="created") == {us: 5, eu: 3}
    assert per("provisioner_rows", status="failed") == {us: 1, eu: 0}
    assert per("provisioner_rows", status="deferred") == {us: 0, eu: 2}
    assert per("provisioner_retries") == {us: 1, eu: 0}
    assert per("provisioner_http_429") == {us: 0, eu: 0}
    assert per("provisioner_requests", **{"class": "5xx"}) == {us: 1, eu: 0}
    assert per("provisioner_requests", **{"class": "4xx"}) == {us: 1, eu: 0}
    assert per("provisioner_requests", **{"class": "2xx"}) == {us: 5, eu: 3}
    # Per workspace they add up to the run's totals in summary.json.
    for status, total in summary["counts"].items():
        assert sum(per("provisioner_rows", status=status).values()) == total
    assert sum(sum(per("provisioner_requests", **{"class": c}).values())
               for c in ("2xx", "4xx", "5xx", "none")) == summary["requests"]  # fmt: skip
    # Each workspace's quota gauges are its own window, as the sandbox counted it.
    lanes = {w["workspace"]: w for w in summary["workspaces"]}
    for label, created in ((us, 5), (eu, 3)):
        (window,) = sandbox.ledger.window_figures(label)
        assert per("provisioner_quota_limit")[label] == window.quota == 50
        assert per("provisioner_quota_remaining")[label] == 50 - created
        assert per("provisioner_quota_remaining")[label] == lanes[label]["remaining"]
        reset = per("provisioner_quota_reset_timestamp_seconds")[label]
        assert 0 <= reset - epoch(lanes[label]["reset_at"]) < 0.001
    assert {dict(k)["name"] for k in found["provisioner_workspace_info"]} == {"us", "eu"}
    assert set(per("provisioner_rows_per_second")) == {us, eu}
    # The run's own gauges are one series each, labelled with both workspaces.
    run_labels = frozenset({"workspaces": ",".join(sorted((us, eu)))}.items())
    assert found["provisioner_run_exit_code"] == {run_labels: 1}
    assert set(found["provisioner_run_duration_seconds"]) == {run_labels}
    assert set(found["provisioner_run_started_timestamp_seconds"]) == {run_labels}
    done = await asyncio.to_thread(
        subprocess.run, [promtool, "check", "metrics"], input=path.read_bytes(),
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert not done.stdout.strip(), done.stdout
