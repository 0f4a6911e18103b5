"""Two hosts sharing one PostgreSQL store, as two `provisioner run` processes against
the sandbox: failover (the first killed -9, the second takes over once its lease
expired and finishes the work) and fencing (the first frozen past its lease, the second
takes over, the first woken sends nothing and changes nothing, and says why).

The first process is stopped or killed by the sandbox itself, at a moment when every
one of its workers has a request waiting for an answer (the sandbox answers after a
latency): none of them is then writing a request, so what it sent before the signal is
exactly what the sandbox received from it. What it had in flight is read from the store
afterwards: the intents it committed and no outcome settled.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from aiohttp import web

from provisioner.sandbox.server import Sandbox, SandboxConfig
from tests.pg_server import PASSWORD

from .helpers import PYTHON, ROOT, assert_invariant, cli_env, outputs, write_csv
from .test_cli import provisioner

CONCURRENCY = 4
LATENCY_MS = 250
LEASE_S = 2  # the URL's ?lease_s=: short, so the second host need not wait long
ROWS = 24  # even lines carry a send_id, odd ones do not


class Trigger:
    """Middleware: records each create request's campaign_id and which host sent it, and
    signals the first host once it has sent ``after`` requests and all ``CONCURRENCY``
    of its workers wait for an answer (before answering the last one)."""

    def __init__(self, after: int, sig: signal.Signals) -> None:
        self.after, self.sig = after, sig
        self.pid: int | None = None
        self.host = "first"
        self.seen: dict[str, Counter[str]] = {"first": Counter(), "second": Counter()}
        self.pending: set[str] = set()
        #: The first host's requests waiting for an answer when it was signalled.
        self.in_flight: set[str] = set()
        self.fired = asyncio.Event()

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Count the request; at the trigger, stop or kill the first host."""
        if request.path != "/sends/id/create":
            return await handler(request)
        body = orjson.loads(await request.read())
        seen = self.seen[self.host]
        campaign = body["campaign_id"]
        seen[campaign] += 1
        self.pending.add(campaign)
        if (
            self.host == "first"
            and not self.fired.is_set()
            and seen.total() >= self.after
            and len(self.pending) == CONCURRENCY
            and self.pid is not None
        ):
            os.kill(self.pid, self.sig)
            self.in_flight = set(self.pending)
            self.fired.set()
        try:
            return await handler(request)
        finally:
            self.pending.discard(campaign)


@pytest.fixture
async def stack() -> AsyncIterator[list[Sandbox]]:
    started: list[Sandbox] = []
    yield started
    for sandbox in started:
        await sandbox.stop()


async def start_sandbox(stack: list[Sandbox], trigger: Trigger) -> Sandbox:
    config = SandboxConfig(daily_quota=100_000, latency_ms=LATENCY_MS, repeat_counts=True, seed=1)
    sandbox = Sandbox(config, shutdown_timeout=0.1)
    sandbox.app.middlewares.append(trigger.middleware)
    await sandbox.start()
    stack.append(sandbox)
    return sandbox


def manifest(tmp_path: Path) -> Path:
    rows = [(f"c{i:03d}", f"s{i:03d}" if i % 2 == 0 else "") for i in range(ROWS)]
    return write_csv(tmp_path / "m.csv", rows)


def args(sandbox: Sandbox, m: Path, out: Path, url: str) -> list[str]:
    return [
        "run", str(m), "--out", str(out), "--base-url", sandbox.url,
        "--state", f"{url}?lease_s={LEASE_S}", "--rate", "5000",
        "--concurrency", str(CONCURRENCY),
    ]  # fmt: skip


async def spawn(cli: list[str], log: Path) -> asyncio.subprocess.Process:
    """`provisioner ARGS` in the background, its stdout and stderr in ``log``."""
    with log.open("wb") as sink:
        return await asyncio.create_subprocess_exec(
            PYTHON, "-m", "provisioner", *cli, stdin=asyncio.subprocess.DEVNULL,
            stdout=sink, stderr=sink, env=cli_env(), cwd=ROOT,
        )  # fmt: skip


def dump(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of the store, in a stable order."""
    tables = ("runs", "created", "intents", "outcomes", "quota_windows", "leases", "meta")
    with psycopg.connect(url) as conn:
        return {
            t: sorted(conn.execute(f"SELECT * FROM provisioner.{t}").fetchall(), key=repr)
            for t in tables
        }


Stored = tuple[set[str], set[str]]


def store_state(url: str) -> Stored:
    """The campaigns the store holds as created, and those with an intent (in flight)."""
    with psycopg.connect(url) as conn:
        created = {r[0] for r in conn.execute("SELECT campaign_id FROM provisioner.created")}
        intents = {r[0] for r in conn.execute("SELECT campaign_id FROM provisioner.intents")}
    return created, intents


async def run_second(sandbox: Sandbox, m: Path, out: Path, url: str) -> tuple[int, str]:
    """The second host's run, started again while the first one's lease holds it off
    (exit 75, as cron would start it again); returns its exit code and stderr."""
    while True:
        code, _, err = await provisioner(*args(sandbox, m, out, url))
        if code != 75:
            return code, err
        assert "in use by another run" in err
        await asyncio.sleep(0.2)


WITHOUT_ID = {f"c{i:03d}" for i in range(1, ROWS, 2)}


def check_second_run(out: Path, sandbox: Sandbox, trigger: Trigger, stored: Stored) -> None:
    """The second host finished the work: every row in one output file; what the first
    host committed as created is skipped and never sent again; its send_id-less rows in
    flight (an intent, no outcome) are in doubt and never sent again, the others sent;
    no row without a send_id given two ids, no combination created twice but those the
    first host had in flight."""
    created, intents = stored
    first_sent = set(trigger.seen["first"])
    doubt = intents & WITHOUT_ID
    assert trigger.in_flight & WITHOUT_ID, "the first host had no send_id-less row in flight"
    assert trigger.in_flight & WITHOUT_ID <= doubt <= first_sent - created
    assert_invariant(out, ROWS)
    results, failures, deferred, _ = outputs(out)
    assert not deferred
    assert {r["campaign_id"] for r in results if r["status"] == "skipped"} == created
    assert {f["campaign_id"] for f in failures} == doubt
    assert {f["error"] for f in failures} == {"in_doubt"}
    everything = {f"c{i:03d}" for i in range(ROWS)}
    assert set(trigger.seen["second"]) == everything - created - doubt
    assert max(trigger.seen["second"].values()) == 1
    per_campaign = Counter(e.campaign_id for e in sandbox.ledger.created)
    assert all(per_campaign[c] == 1 for c in WITHOUT_ID - doubt)
    assert all(per_campaign[c] <= 1 for c in doubt)
    twice = {c for c, n in per_campaign.items() if n > 1}
    assert twice <= first_sent - created - WITHOUT_ID, twice
    assert max(per_campaign.values()) <= 2


async def test_failover_after_a_kill_9(tmp_path: Path, pg_url: str, stack: list[Sandbox]) -> None:
    """Host one killed -9 mid-run: host two (started again while the lease holds it
    off) takes the expired lease over naming the dead holder, and finishes; host one's send_id-less
    rows in flight are in doubt, nothing it committed is sent again."""
    trigger = Trigger(after=2 * CONCURRENCY, sig=signal.SIGKILL)
    sandbox = await start_sandbox(stack, trigger)
    m = manifest(tmp_path)
    first = await spawn(args(sandbox, m, tmp_path / "out1", pg_url), tmp_path / "first.log")
    trigger.pid = first.pid
    assert await first.wait() == -signal.SIGKILL
    assert trigger.fired.is_set()
    stored = store_state(pg_url)
    trigger.host = "second"
    code, err = await run_second(sandbox, m, tmp_path / "out2", pg_url)
    assert code == 1, err  # failures: the rows in doubt
    assert "stale_lock_taken_over" in err
    assert f'"pid": {first.pid}' in err or f'"pid":{first.pid}' in err
    check_second_run(tmp_path / "out2", sandbox, trigger, stored)
    assert PASSWORD not in err


async def test_a_frozen_host_is_fenced_when_it_wakes(
    tmp_path: Path, pg_url: str, stack: list[Sandbox]
) -> None:
    """Host one SIGSTOPped past its lease, host two takes over and finishes; host one
    SIGCONTed sends nothing more (the ledger and the requests seen are unchanged),
    changes nothing in the store, and exits non-zero with a line saying why."""
    trigger = Trigger(after=2 * CONCURRENCY, sig=signal.SIGSTOP)
    sandbox = await start_sandbox(stack, trigger)
    m = manifest(tmp_path)
    first = await spawn(args(sandbox, m, tmp_path / "out1", pg_url), tmp_path / "first.log")
    trigger.pid = first.pid
    try:
        await asyncio.wait_for(trigger.fired.wait(), 60)
        stored = store_state(pg_url)
        trigger.host = "second"
        code, err = await run_second(sandbox, m, tmp_path / "out2", pg_url)
        assert code == 1, err
        check_second_run(tmp_path / "out2", sandbox, trigger, stored)
        before = (sandbox.ledger.total, len(sandbox.ledger.created), dump(pg_url))
        sent_before = trigger.seen["first"].total()
        trigger.host = "first"
    finally:
        os.kill(first.pid, signal.SIGCONT)
    await asyncio.wait_for(first.wait(), 60)
    text = (tmp_path / "first.log").read_text()
    assert first.returncode == 2, text
    assert "was this process paused?" in text
    assert "stopped sending" in text
    assert trigger.seen["first"].total() == sent_before  # nothing more arrived
    assert (sandbox.ledger.total, len(sandbox.ledger.created), dump(pg_url)) == before
    assert PASSWORD not in text
