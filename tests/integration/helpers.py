"""Helpers for end-to-end tests: manifests, settings, output readers, the invariant, and
the CLI started in the background."""

from __future__ import annotations

import asyncio
import csv
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from provisioner._config.settings import Settings, build_settings
from provisioner.sandbox.server import Sandbox

KEY = "sandbox-key"
ROOT = Path(__file__).resolve().parents[2]


def write_csv(
    path: Path, rows: Iterable[Sequence[str]], header: Sequence[str] = ("campaign_id", "send_id")
) -> Path:
    """Write a CSV manifest with the given header."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def campaigns(n: int, *, with_send_id: bool = True, prefix: str = "c") -> list[tuple[str, str]]:
    """n distinct (campaign_id, send_id) rows."""
    return [(f"{prefix}{i:06d}", f"s{i:06d}" if with_send_id else "") for i in range(n)]


def settings_for(url: str, tmp_path: Path, manifest: Path | str, **cli: Any) -> Settings:
    """Settings for a fast test run against a sandbox at ``url``."""
    defaults: dict[str, Any] = {
        "base_url": url,
        "rate": 10_000.0,
        "concurrency": 8,
        "state_path": str(tmp_path / "state.sqlite3"),
    }
    defaults.update(cli)
    config = tmp_path / "fast.toml"
    if not config.exists():
        config.write_text(
            "[retry]\nbackoff_base = 0.01\nbackoff_cap = 0.05\nmax_time = 10\n"
            "[run]\nread_timeout = 2.0\nconnect_timeout = 1.0\n"
        )
    return build_settings(
        manifest=str(manifest),
        out_dir=tmp_path / "out",
        cli=defaults,
        env={"BRAZE_API_KEY": KEY},
        config_path=config,
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every object of a JSONL file."""
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line]


def read_deferred(path: Path) -> list[dict[str, str]]:
    """deferred.csv as dicts."""
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def outputs(
    out: Path,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, str]], dict[str, Any]]:
    """(results, failures, deferred, summary) of an output folder."""
    summary = orjson.loads((out / "summary.json").read_bytes())
    return (
        read_jsonl(out / "results.jsonl"),
        read_jsonl(out / "failures.jsonl"),
        read_deferred(out / "deferred.csv"),
        summary,
    )


def assert_invariant(out: Path, expected_rows: int) -> None:
    """Every manifest row is in exactly one output file, and rows_total is their sum."""
    results, failures, deferred, summary = outputs(out)
    assert len(results) + len(failures) + len(deferred) == expected_rows
    assert summary["rows_total"] == expected_rows
    lines = [r["line"] for r in results] + [f["line"] for f in failures]
    assert len(lines) == len(set(lines))


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment for running the CLI as a subprocess from the repo."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["BRAZE_API_KEY"] = KEY
    env.pop("PROVISIONER_STATE", None)
    if extra:
        env.update(extra)
    return env


PYTHON = sys.executable


async def start_cli(
    *args: str,
    stdin: bool = False,
    quiet: bool = False,
    env: Mapping[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> asyncio.subprocess.Process:
    """Start ``python -m provisioner ARGS`` in the background, to signal, kill or feed it:
    stdin is a pipe when ``stdin``, stdout and stderr are captured unless ``quiet``;
    ``preexec_fn`` runs in the child before exec (e.g. to set a resource limit)."""
    output = asyncio.subprocess.DEVNULL if quiet else asyncio.subprocess.PIPE
    return await asyncio.create_subprocess_exec(
        PYTHON, "-m", "provisioner", *args,
        stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
        stdout=output, stderr=output, env=dict(env) if env is not None else cli_env(), cwd=ROOT,
        preexec_fn=preexec_fn,
    )  # fmt: skip


async def wait_for_created(sandbox: Sandbox, count: int = 1) -> bool:
    """Poll the sandbox's ledger until ``count`` rows are created (a run is under way);
    False if that did not happen within 20 s (a generous bound for a busy machine, not a
    time the test asserts)."""
    for _ in range(2000):
        if len(sandbox.ledger.created) >= count:
            return True
        await asyncio.sleep(0.01)
    return len(sandbox.ledger.created) >= count


async def sending(sandbox: Sandbox, proc: asyncio.subprocess.Process, before: int) -> bool:
    """Wait until the run ``proc`` has created a row (the ledger holds more than ``before``):
    True once it is sending, False if it ended first or sent nothing for 20 s. A delay
    counted from the start alone can end before the first request on a busy machine (the
    start-up takes longer), and a kill then interrupts nothing."""
    for _ in range(2000):
        if proc.returncode is not None:
            return False
        if len(sandbox.ledger.created) > before:
            return True
        await asyncio.sleep(0.01)
    return False
