"""The command line as users and cron run it: a subprocess against the sandbox."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from provisioner.sandbox.server import Sandbox
from tests.conftest import SandboxFactory

from .helpers import (
    assert_invariant,
    campaigns,
    outputs,
    read_jsonl,
    start_cli,
    wait_for_created,
    write_csv,
)


async def provisioner(
    *args: str,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> tuple[int, str, str]:
    """Run ``python -m provisioner ARGS``; return (exit code, stdout, stderr).

    ``preexec_fn`` runs in the child before exec (e.g. to set a resource limit)."""
    proc = await start_cli(*args, stdin=stdin is not None, env=env or None, preexec_fn=preexec_fn)
    out, err = await proc.communicate(stdin)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def run_args(sandbox_url: str, tmp_path: Path, manifest: str, *extra: str) -> list[str]:
    return [
        "run",
        manifest,
        "--out",
        str(tmp_path / "out"),
        "--base-url",
        sandbox_url,
        "--state",
        str(tmp_path / "state.sqlite3"),
        "--rate",
        "5000",
        *extra,
    ]


async def test_stdin_jsonl_end_to_end(sandbox: Sandbox, tmp_path: Path) -> None:
    """`-` reads the manifest from standard input (with --format)."""
    data = b"".join(b'{"campaign_id": "c%d", "send_id": "s%d"}\n' % (i, i) for i in range(7))
    code, _, err = await provisioner(
        *run_args(sandbox.url, tmp_path, "-", "--format", "jsonl"), stdin=data
    )
    assert code == 0, err
    assert_invariant(tmp_path / "out", 7)
    assert len(sandbox.ledger.created) == 7


async def test_stdin_without_format_is_a_usage_error(sandbox: Sandbox, tmp_path: Path) -> None:
    """Standard input without --format stops with exit 2 before anything is sent."""
    code, _, err = await provisioner(*run_args(sandbox.url, tmp_path, "-"), stdin=b"")
    assert code == 2
    assert "--format" in err
    assert sandbox.ledger.total == 0


async def test_manifest_without_campaign_id_column_exits_2(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """No campaign_id column: exit 2, a one-line message naming the file, nothing sent."""
    manifest = tmp_path / "m.csv"
    manifest.write_text("campaign,send_id\nc1,s1\n")
    code, _, err = await provisioner(*run_args(sandbox.url, tmp_path, str(manifest)))
    assert code == 2
    assert "m.csv" in err
    assert "campaign_id" in err
    assert "Traceback" not in err
    assert sandbox.ledger.total == 0


async def test_bad_config_exits_2_before_sending(sandbox: Sandbox, tmp_path: Path) -> None:
    """An out-of-range config value stops the run before any request."""
    manifest = write_csv(tmp_path / "m.csv", campaigns(3))
    config = tmp_path / "c.toml"
    config.write_text("[run]\nrate = -1\n")
    code, _, err = await provisioner(
        *run_args(sandbox.url, tmp_path, str(manifest)), "--config", str(config)
    )
    assert code == 2, err
    assert "rate" in err
    assert sandbox.ledger.total == 0


def _out_under_a_file(tmp: Path) -> Path:
    (tmp / "file").write_text("x")
    return tmp / "file" / "out"


def _out_is_a_file(tmp: Path) -> Path:
    (tmp / "out-file").write_text("x")
    return tmp / "out-file"


def _read_only_folder(tmp: Path) -> Path:
    if os.geteuid() == 0:
        pytest.skip("root writes into a read-only folder; see the sysfs variant")
    folder = tmp / "ro"
    folder.mkdir(mode=0o555)
    return folder


def _read_only_filesystem(tmp: Path) -> Path:
    # sysfs refuses new folders even to root: a read-only place that works either way.
    if not Path("/sys/kernel").is_dir():
        pytest.skip("no sysfs here")
    return Path("/sys/provisioner-test-out")


# Each: the --out folder to use, and a fragment the one-line error must contain.
UNWRITABLE_OUT: dict[str, tuple[Callable[[Path], Path], str]] = {
    "parent_is_a_file": (_out_under_a_file, "Not a directory"),
    "folder_is_a_file": (_out_is_a_file, "not a folder"),
    "read_only_folder": (_read_only_folder, "Permission denied"),
    "read_only_filesystem": (_read_only_filesystem, "cannot write to the output folder"),
    "name_too_long": (lambda tmp: tmp / ("x" * 300), "File name too long"),
}


@pytest.mark.parametrize(
    "variant",
    [pytest.param(v, marks=pytest.mark.slow) if v == "name_too_long" else v
     for v in sorted(UNWRITABLE_OUT)],
)  # fmt: skip
async def test_unwritable_output_folder_exits_2(
    sandbox: Sandbox, tmp_path: Path, variant: str
) -> None:
    """An output folder that cannot be created or written stops the run before any request,
    with one line naming the folder, the reason and the fix."""
    manifest = write_csv(tmp_path / "m.csv", campaigns(3))
    make, expected = UNWRITABLE_OUT[variant]
    out = make(tmp_path)
    args = run_args(sandbox.url, tmp_path, str(manifest))
    args[args.index("--out") + 1] = str(out)
    code, _, err = await provisioner(*args)
    assert code == 2, err
    assert "Traceback" not in err
    assert err.count("provisioner: error:") == 1
    assert str(out) in err
    assert expected in err
    assert "--out" in err
    assert sandbox.ledger.total == 0
    assert not (tmp_path / "state.sqlite3").exists()  # stopped before the store too


async def test_missing_output_parents_are_created(sandbox: Sandbox, tmp_path: Path) -> None:
    """--out with missing parent folders: they are created (as `mkdir -p` would)."""
    manifest = write_csv(tmp_path / "m.csv", campaigns(2))
    args = run_args(sandbox.url, tmp_path, str(manifest))
    out = tmp_path / "a" / "b" / "out"
    args[args.index("--out") + 1] = str(out)
    code, _, err = await provisioner(*args)
    assert code == 0, err
    assert_invariant(out, 2)


async def test_http_base_url_to_remote_host_is_refused(tmp_path: Path) -> None:
    """Plain http is refused for a non-loopback host (the key would travel in clear)."""
    manifest = write_csv(tmp_path / "m.csv", campaigns(1))
    code, _, err = await provisioner(*run_args("http://example.com", tmp_path, str(manifest)))
    assert code == 2
    assert "https" in err


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
async def test_signal_finishes_in_flight_and_writes_outputs(
    sandbox_factory: SandboxFactory, tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    """SIGTERM/SIGINT: stop taking rows, finish in-flight requests, write the outputs,
    exit 143/130; the next run finishes the work without creating anything twice."""
    sandbox = await sandbox_factory(latency_ms=50, daily_quota=1000)
    manifest = write_csv(tmp_path / "m.csv", campaigns(400))
    proc = await start_cli(*run_args(sandbox.url, tmp_path, str(manifest)), "--concurrency", "4")
    await wait_for_created(sandbox, 8)
    proc.send_signal(sig)
    _, err = await proc.communicate()
    assert proc.returncode == code, err.decode()
    results, failures, deferred, summary = outputs(tmp_path / "out")
    assert summary["exit_code"] == code
    assert_invariant(tmp_path / "out", 400)
    assert not failures  # in-flight requests finished: nothing in doubt
    assert len(results) == len(sandbox.ledger.created)
    assert summary["deferred_reasons"] == {"interrupted": len(deferred)}
    # The next run finishes the work without creating anything twice.
    code, _, err2 = await provisioner(*run_args(sandbox.url, tmp_path, str(manifest)))
    assert code == 0, err2
    assert len(sandbox.ledger.created) == 400


async def test_sigterm_ends_a_trickling_servers_requests_within_the_grace(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """SIGTERM while every answer trickles in a byte a second (minutes per request): the
    wait ends after the stop's grace, the request in flight is in doubt for a row without
    a send_id (deferred with one), the rest deferred, the outputs written (exit 143)."""
    from provisioner.sandbox.faults import FaultRule

    sandbox = await sandbox_factory(
        faults=(FaultRule("trickle_headers", delay_ms=1000),), daily_quota=1000
    )
    # The first request probes the quota window alone (one of the rows: any of them may
    # get there first); the others wait behind it.
    rows = [*campaigns(3, with_send_id=False, prefix="n"), *campaigns(3)]
    manifest = write_csv(tmp_path / "m.csv", rows)
    proc = await start_cli(*run_args(sandbox.url, tmp_path, str(manifest)), "--concurrency", "6")
    assert await wait_for_created(sandbox, 1)
    proc.send_signal(signal.SIGTERM)
    # A bound against a hang (each request would take minutes), not a timing assertion.
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 143, err.decode()
    _, failures, deferred, summary = outputs(tmp_path / "out")
    assert_invariant(tmp_path / "out", 6)
    probe = sandbox.ledger.created[0].campaign_id
    expected = [(probe, "in_doubt")] if probe.startswith("n") else []
    assert [(f["campaign_id"], f["error"]) for f in failures] == expected
    assert len(deferred) == 6 - len(expected)
    assert summary["deferred_reasons"] == {"interrupted": len(deferred)}


@pytest.mark.parametrize("command", ["run", "sandbox", "export", "status", "validate"])
async def test_help_has_examples(command: str) -> None:
    """Every command's --help shows at least one example."""
    code, out, _ = await provisioner(command, "--help")
    assert code == 0
    assert "example" in out


async def test_logs_are_json_lines_with_progress_when_not_a_terminal(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """Off a terminal: JSON lines only, no escape codes, periodic progress with an ETA."""
    sandbox = await sandbox_factory(latency_ms=20)
    manifest = write_csv(tmp_path / "m.csv", campaigns(60))
    config = tmp_path / "c.toml"
    config.write_text("[run]\nprogress_interval = 0.2\n")
    code, _, err = await provisioner(
        *run_args(sandbox.url, tmp_path, str(manifest)),
        "--config",
        str(config),
        "--concurrency",
        "1",
    )
    assert code == 0, err
    log_lines = [line for line in err.splitlines() if line.startswith("{")]
    events = [orjson.loads(line) for line in log_lines]
    assert "\x1b" not in err
    names = [e["event"] for e in events]
    assert names[0] == "run_started"
    assert names[-1] == "run_finished"
    progress = [e for e in events if e["event"] == "progress"]
    assert progress
    assert "eta_s" in progress[0]
    assert "rows_per_s" in progress[0]
    assert not [e for e in events if "line" in e]  # no per-row events when every row succeeds


async def test_row_failed_events_are_capped(sandbox: Sandbox, tmp_path: Path) -> None:
    """150 invalid rows: 100 row_failed events, one note that the rest are only in
    failures.jsonl, and all 150 in failures.jsonl."""
    manifest = write_csv(tmp_path / "m.csv", [(f"bad\x01{i}", "") for i in range(150)])
    code, _, err = await provisioner(*run_args(sandbox.url, tmp_path, str(manifest)))
    assert code == 1, err
    names = [orjson.loads(line)["event"] for line in err.splitlines() if line.startswith("{")]
    assert names.count("row_failed") == 100
    assert names.count("row_failed_logging_capped") == 1
    assert len(read_jsonl(tmp_path / "out" / "failures.jsonl")) == 150


async def test_metrics_file_from_the_command_line(sandbox: Sandbox, tmp_path: Path) -> None:
    """--metrics-file writes a Prometheus textfile whose row counts match summary.json."""
    from prometheus_client.parser import text_string_to_metric_families

    manifest = write_csv(tmp_path / "m.csv", [*campaigns(5), ("", "x")])
    metrics = tmp_path / "provisioner.prom"
    code, _, err = await provisioner(
        *run_args(sandbox.url, tmp_path, str(manifest)), "--metrics-file", str(metrics)
    )
    assert code == 1, err
    families = {f.name: f for f in text_string_to_metric_families(metrics.read_text())}
    rows = {s.labels["status"]: s.value for s in families["provisioner_rows"].samples}
    _, _, _, summary = outputs(tmp_path / "out")
    assert rows == {k: float(v) for k, v in summary["counts"].items()}


async def test_unwritable_metrics_path_exits_2_before_sending(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """A --metrics-file in a folder that does not exist stops the run before any request."""
    manifest = write_csv(tmp_path / "m.csv", campaigns(2))
    code, _, err = await provisioner(
        *run_args(sandbox.url, tmp_path, str(manifest)),
        "--metrics-file", str(tmp_path / "no" / "such" / "m.prom"),
    )  # fmt: skip
    assert code == 2, err
    assert sandbox.ledger.total == 0


async def test_sigterm_during_a_quota_pause_stops_at_once(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """SIGTERM while paused for a quota reset ends the pause: exit 143 within seconds."""
    import time

    sandbox = await sandbox_factory(daily_quota=2, window_seconds=60)
    manifest = write_csv(tmp_path / "m.csv", campaigns(10))
    proc = await start_cli(*run_args(sandbox.url, tmp_path, str(manifest)), "--max-wait", "120")
    await wait_for_created(sandbox, 2)
    await asyncio.sleep(0.3)  # now paused until the window resets (up to a minute away)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 143, err.decode()
    assert time.monotonic() - sent < 10
    assert_invariant(tmp_path / "out", 10)
