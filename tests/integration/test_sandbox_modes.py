"""The sandbox's run-time modes over real sockets: the shared consumer, omitted and garbled
rate-limit headers, outages, their admin endpoints and their command-line flags.

Windows are short and driven by a settable clock, so that nothing here sleeps except the
two tests that check the real clock and the command line end to end.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from provisioner._cli import args as cli_args
from provisioner._cli import main as cli
from provisioner.errors import UsageError
from provisioner.sandbox.modes import GARBLE_VARIANTS, HEADER_MODES, Outage, parse_outage
from provisioner.sandbox.server import FaultRule, Sandbox, SandboxConfig, workspace_label
from provisioner.testing import FakeClock
from tests.conftest import SandboxFactory
from tests.integration.test_sandbox import KEY, RATE_HEADERS, Answer, post

ROOT = Path(__file__).resolve().parents[2]
#: Start of a 2-second window: T0 // 2 * 2 == T0.
T0 = 1_000_000.0


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


async def admin(
    http: aiohttp.ClientSession, sandbox: Sandbox, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    """Call an admin endpoint; (status, decoded JSON answer)."""
    async with http.request(method, f"{sandbox.url}{path}", json=body) as resp:
        return resp.status, await resp.json()


async def windows(http: aiohttp.ClientSession, sandbox: Sandbox) -> list[dict[str, Any]]:
    """The ledger's per-window figures, as GET /sandbox/ledger serves them."""
    status, doc = await admin(http, sandbox, "GET", "/sandbox/ledger")
    assert status == 200
    figures: list[dict[str, Any]] = doc["windows"]
    return figures


def figures(start: float, *, ours: int, other: int, http_429: int = 0, outage: int = 0) -> Any:
    """The ledger's figures for the 2-second window of the default key starting at ``start``."""
    return {
        "workspace": workspace_label(KEY),
        "window_start": int(start),
        "window_end": int(start) + 2,
        "quota": 10,
        "ours": ours,
        "other": other,
        "http_429": http_429,
        "outage": outage,
        "invalid_campaign": 0,  # no --campaigns here: every id is valid
        "invalid_counted": 0,
    }


async def shared(sandbox_factory: SandboxFactory, clock: FakeClock, **modes: Any) -> Sandbox:
    """A sandbox with quota 10 over 2-second windows and the given modes."""
    return await sandbox_factory(clock=clock, daily_quota=10, window_seconds=2, **modes)


# -- the shared consumer ---------------------------------------------------------------


async def test_shared_consumer_takes_its_share_at_each_window_start(
    http: aiohttp.ClientSession, sandbox_factory: SandboxFactory
) -> None:
    """By default the other client's N go at each window's start, apart from ours in the ledger."""
    clock = FakeClock(T0 + 0.1)
    sandbox = await shared(sandbox_factory, clock, shared_consumer=4)
    first = [await post(http, sandbox, {"campaign_id": f"a{i}"}) for i in range(2)]
    assert [a.remaining for a in first] == [5, 4]
    clock.now = T0 + 2.0
    assert (await post(http, sandbox, {"campaign_id": "b"})).remaining == 5
    assert await windows(http, sandbox) == [
        figures(T0, ours=2, other=4),
        figures(T0 + 2, ours=1, other=4),
    ]
    assert len(sandbox.ledger.created) == 3  # `created` lists our creations only


async def test_shared_consumer_at_a_fraction_of_the_window(
    http: aiohttp.ClientSession, sandbox_factory: SandboxFactory
) -> None:
    """With shared_at=0.5 Remaining drops by N between our requests at mid-window."""
    clock = FakeClock(T0 + 0.9)
    sandbox = await shared(sandbox_factory, clock, shared_consumer=4, shared_at=0.5)
    assert (await post(http, sandbox, {"campaign_id": "a"})).remaining == 9
    clock.now = T0 + 1.0
    assert (await post(http, sandbox, {"campaign_id": "b"})).remaining == 4


async def test_shared_consumer_spread_over_the_window(
    http: aiohttp.ClientSession, sandbox_factory: SandboxFactory
) -> None:
    """With shared_span=1 its N fall at 0, 1/N, 2/N... of the window; a ledger read shows them."""
    clock = FakeClock(T0)
    sandbox = await shared(sandbox_factory, clock, shared_consumer=4, shared_span=1.0)
    seen = []
    for at in (0.0, 0.49, 0.5, 1.99):
        clock.now = T0 + at
        seen.append([w["other"] for w in await windows(http, sandbox)])
    assert seen == [[1], [1], [2], [4]]


async def test_shared_consumer_never_exceeds_the_quota(
    http: aiohttp.ClientSession, sandbox_factory: SandboxFactory
) -> None:
    """Asking for more than the quota, the other client gets only the quota; we get 429."""
    clock = FakeClock(T0)
    sandbox = await shared(sandbox_factory, clock, shared_consumer=15)
    answer = await post(http, sandbox)
    assert (answer.status, answer.remaining) == (429, 0)
    assert await windows(http, sandbox) == [figures(T0, ours=0, other=10, http_429=1)]


# -- rate-limit headers ----------------------------------------------------------------


async def test_omitted_headers_are_absent_and_the_quota_still_holds(
    http: aiohttp.ClientSession, sandbox_factory: SandboxFactory
) -> None:
    """headers="omit": no rate-limit header on 201, 400, 429 or a fault's 429."""
    sandbox = await sandbox_factory(daily_quota=1, headers="omit")
    sandbox.add_faults([FaultRule("rate_limit", campaign_id="limited")])
    answers = [
        await post(http, sandbox),
        await post(http, sandbox, {"campaign_id": ""}),
        await post(http, sandbox),
        await post(http, sandbox, {"campaign_id": "limited"}),
    ]
    assert [a.status for a in answers] == [201, 400, 429, 429]
    assert all(name not in a.headers for a in answers for name in RATE_HEADERS)
    assert len(sandbox.ledger.created) == 1


def _rate(answer: Answer) -> tuple[str, str, str]:
    """(Limit, Remaining, Reset) as sent."""
    limit, remaining, reset = (answer.headers[name] for name in RATE_HEADERS)
    return limit, remaining, reset


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        ("empty", ("", "", "")),
        ("negative", ("10", "-1", str(int(T0) + 2))),
        ("past_reset", ("10", "9", str(int(T0) - 2))),
        ("text", ("unlimited", "plenty", "soon")),
    ],
)
async def test_garbled_headers_are_garbled_as_documented(
    http: aiohttp.ClientSession,
    sandbox_factory: SandboxFactory,
    variant: str,
    expected: tuple[str, str, str],
) -> None:
    """Each garble variant sends (Limit, Remaining, Reset) exactly as docs/sandbox.md says."""
    clock = FakeClock(T0 + 1)
    sandbox = await shared(sandbox_factory, clock, headers="garble", garble=(variant,))
    answer = await post(http, sandbox)
    assert answer.status == 201
    assert _rate(answer) == expected


async def test_garbling_is_seeded_and_keeps_the_quota(
    http: aiohttp.ClientSession, sandbox_factory: SandboxFactory
) -> None:
    """Same seed, same variants in the same order; a 429 still comes when the quota is spent."""
    runs = []
    for _ in range(2):
        sandbox = await sandbox_factory(daily_quota=12, headers="garble", seed=3)
        answers = [await post(http, sandbox) for _ in range(13)]
        assert [a.status for a in answers] == [201] * 12 + [429]
        runs.append([_rate(a) for a in answers])
    assert runs[0] == runs[1]
    assert {remaining for _, remaining, _ in runs[0]} & {"", "-1", "plenty"}
    assert len({limit for limit, _, _ in runs[0]}) > 1  # more than one variant drawn


# -- outages ---------------------------------------------------------------------------


async def test_outage_5xx_answers_503_creates_nothing_and_ends_on_time(
    http: aiohttp.ClientSession, sandbox_factory: SandboxFactory
) -> None:
    """A 5xx outage answers every create 503 without headers, creates nothing, ends on time."""
    clock = FakeClock(T0)
    sandbox = await shared(sandbox_factory, clock, outages=(Outage(0.5, 1.0, "5xx"),))
    statuses = []
    for at in (0.49, 0.5, 1.49, 1.5):
        clock.now = T0 + at
        answer = await post(http, sandbox, {"campaign_id": f"c{at}"})
        statuses.append(answer.status)
        if answer.status == 503:
            assert answer.json() == {"message": "Service Unavailable"}
            assert all(name not in answer.headers for name in RATE_HEADERS)
    assert statuses == [201, 503, 503, 201]
    clock.now = T0 + 1.0
    assert (await post(http, sandbox, key="wrong")).status == 503
    assert [e.campaign_id for e in sandbox.ledger.created] == ["c0.49", "c1.5"]
    assert sandbox.ledger.count(503) == 3
    assert await windows(http, sandbox) == [figures(T0, ours=2, other=0, outage=2)]


async def test_outage_refuse_resets_connections_and_ends_on_time(
    http: aiohttp.ClientSession, sandbox_factory: SandboxFactory
) -> None:
    """A refuse outage resets every create's connection, creates nothing, and ends on time."""
    clock = FakeClock(T0)
    sandbox = await shared(sandbox_factory, clock, outages=(Outage(0.5, 0.5, "refuse"),))
    assert (await post(http, sandbox, {"campaign_id": "before"})).status == 201
    clock.now = T0 + 0.5
    for _ in range(2):  # the kept-alive connection, then a new one
        with pytest.raises(aiohttp.ClientConnectionError):
            await post(http, sandbox)
    assert (await admin(http, sandbox, "GET", "/sandbox/modes"))[1]["outage_now"] == "refuse"
    clock.now = T0 + 1.0
    assert (await post(http, sandbox, {"campaign_id": "after"})).status == 201
    assert [e.campaign_id for e in sandbox.ledger.created] == ["before", "after"]
    assert sandbox.ledger.count("refused") == 2


async def test_shared_consumer_waits_out_an_outage(
    http: aiohttp.ClientSession, sandbox_factory: SandboxFactory
) -> None:
    """The other client creates nothing during an outage either: it catches up at the end."""
    clock = FakeClock(T0 + 0.5)  # the outage runs from the start: T0 + 0.5 to T0 + 1.5
    outage = Outage(0.0, 1.0, "5xx")
    sandbox = await shared(
        sandbox_factory, clock, shared_consumer=3, shared_at=0.5, outages=(outage,)
    )
    clock.now = T0 + 1.2  # past the other client's time (T0 + 1), still in the outage
    assert (await post(http, sandbox)).status == 503
    assert await windows(http, sandbox) == [figures(T0, ours=0, other=0, outage=1)]
    clock.now = T0 + 1.5
    assert (await post(http, sandbox)).remaining == 6


async def test_outage_admin_endpoints(
    http: aiohttp.ClientSession, sandbox_factory: SandboxFactory
) -> None:
    """POST /sandbox/outage starts an outage now for `seconds`; DELETE ends it at once."""
    clock = FakeClock(T0)
    sandbox = await shared(sandbox_factory, clock)
    status, doc = await admin(
        http, sandbox, "POST", "/sandbox/outage", {"seconds": 5, "mode": "5xx"}
    )
    assert (status, doc["outage_now"]) == (200, "5xx")
    assert doc["outages"] == [{"start": T0, "end": T0 + 5, "mode": "5xx"}]
    assert (await post(http, sandbox)).status == 503
    clock.now = T0 + 1
    status, doc = await admin(http, sandbox, "DELETE", "/sandbox/outage")
    assert (status, doc["outage_now"], doc["outages"][0]["end"]) == (200, None, T0 + 1)
    assert (await post(http, sandbox)).status == 201
    await admin(http, sandbox, "POST", "/sandbox/outage", {"seconds": 1, "mode": "refuse"})
    with pytest.raises(aiohttp.ClientConnectionError):
        await post(http, sandbox)


async def test_modes_admin_endpoint_changes_modes_at_run_time(
    http: aiohttp.ClientSession, sandbox_factory: SandboxFactory
) -> None:
    """POST /sandbox/modes changes only the fields given, at once; GET shows them."""
    clock = FakeClock(T0)
    sandbox = await shared(sandbox_factory, clock)
    status, doc = await admin(http, sandbox, "GET", "/sandbox/modes")
    assert status == 200
    assert doc == {
        "started_at": T0,
        "shared_consumer": 0,
        "shared_at": 0.0,
        "shared_span": 0.0,
        "headers": "normal",
        "garble": list(GARBLE_VARIANTS),
        "reset": "fixed",
        "outages": [],
        "outage_now": None,
    }
    assert (await post(http, sandbox)).remaining == 9
    change = {"shared_consumer": 3, "headers": "omit"}
    status, doc = await admin(http, sandbox, "POST", "/sandbox/modes", change)
    assert (status, doc["shared_consumer"], doc["headers"], doc["shared_at"]) == (200, 3, "omit", 0)
    answer = await post(http, sandbox)
    assert answer.status == 201
    assert "X-RateLimit-Remaining" not in answer.headers
    assert await windows(http, sandbox) == [figures(T0, ours=2, other=3)]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/sandbox/modes", [1]),
        ("/sandbox/modes", {"colour": "red"}),
        ("/sandbox/modes", {"headers": "loud"}),
        ("/sandbox/modes", {"shared_consumer": -1}),
        ("/sandbox/modes", {"shared_consumer": True}),
        ("/sandbox/modes", {"shared_at": 1.0}),
        ("/sandbox/modes", {"shared_at": 0.5, "shared_span": 0.6}),
        ("/sandbox/modes", {"garble": ["sideways"]}),
        ("/sandbox/outage", {"seconds": 0}),
        ("/sandbox/outage", {"seconds": "5"}),
        ("/sandbox/outage", {"seconds": 5, "mode": "slow"}),
        ("/sandbox/outage", {"seconds": 5, "start": 3}),
    ],
)
async def test_mode_admin_rejects_bad_bodies(
    http: aiohttp.ClientSession, sandbox: Sandbox, path: str, body: Any
) -> None:
    """A bad modes or outage body is answered 400 with a message and changes nothing."""
    before = sandbox.modes
    status, doc = await admin(http, sandbox, "POST", path, body)
    assert status == 400
    assert doc["message"]
    assert sandbox.modes == before


async def test_python_api_mirrors_the_admin_endpoints(
    http: aiohttp.ClientSession, sandbox_factory: SandboxFactory
) -> None:
    """Sandbox.set_modes / start_outage / end_outages act like their endpoints."""
    clock = FakeClock(T0)
    sandbox = await shared(sandbox_factory, clock)
    sandbox.set_modes(shared_consumer=2)
    sandbox.start_outage(1.0, "5xx")
    assert (await post(http, sandbox)).status == 503
    sandbox.end_outages()
    assert (await post(http, sandbox)).remaining == 7
    with pytest.raises(ValueError, match="headers"):
        sandbox.set_modes(headers="loud")


# -- configuration and the command line -------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "flag"),
    [
        ({"shared_consumer": -1}, "--shared-consumer"),
        ({"shared_at": 1.0}, "--shared-at"),
        ({"shared_at": 0.5, "shared_span": 0.75}, "--shared-span"),
        ({"headers": "loud"}, "--headers"),
        ({"headers": "garble", "garble": ("sideways",)}, "--garble"),
        ({"garble": ("text",)}, "--garble needs --headers garble"),
    ],
)
def test_bad_mode_config_is_a_usage_error(overrides: dict[str, Any], flag: str) -> None:
    """Impossible mode settings raise UsageError naming the flag."""
    with pytest.raises(UsageError, match=flag):
        SandboxConfig(**overrides)


@pytest.mark.parametrize("text", ["5", "a:b", "1:0", "-1:2", "1:2:slow", "1:nan", "1:2:5xx:x"])
def test_parse_outage_rejects_bad_specs(text: str) -> None:
    """--outage values that are not START>=0:DURATION>0[:5xx|refuse] are refused."""
    with pytest.raises(ValueError, match=r"START|start|duration|mode"):
        parse_outage(text)


def test_cli_flags_become_sandbox_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """The new flags parse into SandboxConfig; --garble alone implies --headers garble."""
    seen: list[SandboxConfig] = []
    monkeypatch.setattr("provisioner.sandbox.server.serve", seen.append)
    args = ["sandbox", "--shared-consumer", "3", "--shared-at", "0.25", "--shared-span", "0.5"]
    args += ["--garble", "text", "--garble", "empty", "--outage", "1:2", "--outage", "4:0.5:refuse"]
    assert cli.main(args) == 0
    [config] = seen
    assert (config.shared_consumer, config.shared_at, config.shared_span) == (3, 0.25, 0.5)
    assert (config.headers, config.garble) == ("garble", ("text", "empty"))
    assert config.outages == (Outage(1.0, 2.0, "5xx"), Outage(4.0, 0.5, "refuse"))
    assert cli.main(["sandbox", "--headers", "omit"]) == 0
    assert (seen[1].headers, seen[1].garble, seen[1].outages) == ("omit", (), ())


@pytest.mark.parametrize(
    "args", [["--outage", "soon"], ["--headers", "normal", "--garble", "text"]]
)
def test_cli_refuses_bad_mode_flags(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    """A bad --outage, or --garble with other headers, exits 2 with a message naming it."""
    monkeypatch.setattr("provisioner.sandbox.server.serve", lambda config: None)
    assert cli.main(["sandbox", *args]) == 2
    assert args[-2] in capsys.readouterr().err


def test_cli_choices_match_the_sandbox() -> None:
    """The parser's --headers and --garble choices are the sandbox's own lists."""
    parser = cli_args.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    actions = {a.dest: a for a in sub.choices["sandbox"]._actions}
    assert tuple(actions["headers"].choices or ()) == HEADER_MODES
    assert tuple(actions["garble"].choices or ()) == GARBLE_VARIANTS


async def _run(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "provisioner",
        "sandbox",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )


async def test_help_lists_the_mode_flags() -> None:
    """`provisioner sandbox --help` shows every mode flag."""
    proc = await _run("--help")
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0
    for flag in ("--shared-consumer", "--shared-at", "--shared-span", "--headers", "--garble"):
        assert flag in out.decode()
    assert "--outage START:DURATION[:MODE]" in out.decode()


async def test_subprocess_serves_the_modes_on_the_real_clock(
    http: aiohttp.ClientSession,
) -> None:
    """`provisioner sandbox` with mode flags serves them, and its outage ends on the real clock."""
    proc = await _run(
        "--daily-quota", "10", "--shared-consumer", "4", "--headers", "garble",
        "--garble", "past_reset", "--outage", "0:0.6:5xx",
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip()
        started = time.monotonic()
        async with http.get(f"{url}/sandbox/modes") as resp:
            doc = await resp.json()
        assert (doc["shared_consumer"], doc["headers"], doc["garble"]) == (
            4,
            "garble",
            ["past_reset"],
        )
        assert doc["outages"][0]["end"] - doc["outages"][0]["start"] == pytest.approx(0.6)
        auth = {"Authorization": "Bearer sandbox-key"}
        body = {"campaign_id": "c"}
        url += "/sends/id/create"
        async with http.post(url, json=body, headers=auth) as resp:
            assert resp.status == 503 or time.monotonic() - started >= 0.6
        await asyncio.sleep(max(0.0, 0.65 - (time.monotonic() - started)))
        async with http.post(url, json=body, headers=auth) as resp:
            assert resp.status == 201
            assert resp.headers["X-RateLimit-Remaining"] == "5"  # 10 - 4 theirs - 1 ours
            assert int(resp.headers["X-RateLimit-Reset"]) < time.time()
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


@pytest.mark.parametrize(
    ("mode", "resets"),
    [
        ("fixed", {str(int(T0) + 2)}),
        ("huge", {"1e30"}),
        ("far", {str(253402300800 + 86400)}),
        ("sliding", {str(int(T0) + 1 + 2)}),
        ("jitter", {str(int(T0) + 2 + d) for d in (-1, 0, 1)}),
    ],
)
async def test_reset_modes_move_the_reset_as_documented(
    http: aiohttp.ClientSession, sandbox_factory: SandboxFactory, mode: str, resets: set[str]
) -> None:
    """Each --reset mode sends X-RateLimit-Reset as docs/sandbox.md says; the quota stays."""
    clock = FakeClock(T0 + 1)
    sandbox = await shared(sandbox_factory, clock, reset=mode)
    answers = [await post(http, sandbox) for _ in range(11)]
    assert {_rate(a)[2] for a in answers[:10]} <= resets
    assert [a.status for a in answers] == [201] * 10 + [429]


async def test_backwards_reset_moves_a_second_earlier_per_creation(
    http: aiohttp.ClientSession, sandbox_factory: SandboxFactory
) -> None:
    """--reset backwards: the window's end minus the creations of the window so far."""
    sandbox = await sandbox_factory(clock=FakeClock(T0), daily_quota=10, reset="backwards")
    answers = [await post(http, sandbox) for _ in range(3)]
    end = int(T0) // 86400 * 86400 + 86400
    assert [_rate(a)[2] for a in answers] == [str(end - n) for n in (1, 2, 3)]
