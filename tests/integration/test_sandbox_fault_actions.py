"""The sandbox's issue-18 fault actions over real sockets, each pinned directly: a 5xx after
creating, the trickling answers, the echoed credentials, another send_id, the ``retry_after``
field, and all of them read from a fault file and from ``provisioner sandbox --faults``.

The fault matrix (test_fault_matrix.py) checks what the client does with them; this file
checks that the sandbox really does what docs/sandbox.md says, so that a broken fault
cannot make a matrix case pass vacuously.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import aiohttp
import orjson
import pytest

from provisioner._cli import main as cli
from provisioner.sandbox.server import FaultRule, Sandbox, SandboxConfig, load_faults
from tests.conftest import SandboxFactory
from tests.integration.test_sandbox import KEY, RATE_HEADERS, post

DATE = "Wed, 21 Oct 2026 07:28:00 GMT"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


@pytest.mark.parametrize("status", [500, 502, 504])
async def test_error_after_answers_its_5xx_but_the_ledger_holds_the_creation(
    http: aiohttp.ClientSession, sandbox: Sandbox, status: int
) -> None:
    """error_after creates (ledger, quota) and then answers its 5xx with rate-limit headers."""
    sandbox.add_faults([FaultRule("error_after", status=status, times=1)])
    answer = await post(http, sandbox, {"campaign_id": "c", "send_id": "s-1"})
    assert answer.status == status
    assert "send_id" not in answer.json()
    assert answer.remaining == 99  # the quota was spent
    assert [(e.campaign_id, e.send_id) for e in sandbox.ledger.created] == [("c", "s-1")]
    assert sandbox.ledger.by_status == {str(status): 1}
    # The same combination again is a repeat: the 201 it would have had, no new creation.
    again = await post(http, sandbox, {"campaign_id": "c", "send_id": "s-1"})
    assert (again.status, again.json()["send_id"], len(sandbox.ledger.created)) == (201, "s-1", 1)


async def test_echo_auth_quotes_the_key_raw_base64_and_url_encoded_and_creates_nothing(
    http: aiohttp.ClientSession, sandbox: Sandbox
) -> None:
    """echo_auth answers its status with the Authorization header in three encodings."""
    sandbox.add_faults([FaultRule("echo_auth", status=400)])
    answer = await post(http, sandbox)
    auth = f"Bearer {KEY}"
    assert answer.status == 400
    doc = answer.json()
    assert auth in doc["message"]
    assert base64.b64encode(auth.encode()).decode() in doc["message"]
    assert quote(auth, safe="") in doc["message"]
    assert doc["errors"] == [auth]
    assert sandbox.ledger.created == []
    assert sandbox.ledger.by_status == {"400": 1}


@pytest.mark.parametrize(
    ("body", "expected"),
    [({"campaign_id": "c", "send_id": "s-1"}, "s-1-other"), ({"campaign_id": "c"}, None)],
)
async def test_other_send_id_answers_201_naming_another_id_than_it_created(
    http: aiohttp.ClientSession, sandbox: Sandbox, body: dict[str, str], expected: str | None
) -> None:
    """other_send_id creates the requested id but answers 201 with ``<id>-other``."""
    sandbox.add_faults([FaultRule("other_send_id")])
    answer = await post(http, sandbox, body)
    assert answer.status == 201
    [entry] = sandbox.ledger.created
    assert answer.json() == {"message": "success", "send_id": f"{entry.send_id}-other"}
    if expected is not None:
        assert answer.json()["send_id"] == expected
    else:
        assert entry.send_id.startswith("sbx_")  # generated, then misreported
    assert sandbox.ledger.by_status == {"201": 1}


async def _raw_exchange(sandbox: Sandbox, body: bytes) -> tuple[bytes, bytes]:
    """POST over a bare socket: (the first read, everything until the server closes)."""
    host, port = sandbox.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /sends/id/create HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    first = await asyncio.wait_for(reader.read(65536), 5)
    rest = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return first, first + rest


@pytest.mark.parametrize("action", ["trickle_body", "trickle_headers"])
async def test_trickling_answers_arrive_a_byte_at_a_time_and_are_the_normal_201(
    sandbox: Sandbox, action: str
) -> None:
    """trickle_headers sends even the status line byte by byte; trickle_body sends the head
    at once and then the body byte by byte; both add up to the normal 201, after creating."""
    sandbox.add_faults([FaultRule(action, delay_ms=3)])
    first, whole = await _raw_exchange(sandbox, b'{"campaign_id": "c", "send_id": "s-1"}')
    head, _, body = whole.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 201 Created\r\n")
    assert all(name.encode() in head for name in RATE_HEADERS)
    assert orjson.loads(body) == {"message": "success", "send_id": "s-1"}
    if action == "trickle_headers":
        assert len(first) < len(b"HTTP/1.1 201")  # not even the status line at once
    else:
        assert first.startswith(head + b"\r\n\r\n")  # the whole head in one write
        assert len(first) < len(head) + 4 + len(body)  # but not the body
    assert [e.send_id for e in sandbox.ledger.created] == ["s-1"]
    assert sandbox.ledger.by_status == {"201": 1}


@pytest.mark.parametrize("value", ["7", DATE, "soon"])
@pytest.mark.parametrize(
    ("rule", "status"),
    [(FaultRule("rate_limit"), 429), (FaultRule("status", status=503), 503)],
)
async def test_retry_after_is_sent_as_written_on_a_rate_limit_or_status_answer(
    http: aiohttp.ClientSession, sandbox: Sandbox, rule: FaultRule, status: int, value: str
) -> None:
    """A rule's retry_after (seconds, an HTTP date, nonsense) goes out as Retry-After as is."""
    sandbox.add_faults([FaultRule(rule.action, status=rule.status, retry_after=value)])
    answer = await post(http, sandbox)
    assert (answer.status, answer.headers["Retry-After"]) == (status, value)
    assert sandbox.ledger.created == []


async def test_no_retry_after_without_the_field(
    http: aiohttp.ClientSession, sandbox: Sandbox
) -> None:
    """Without retry_after a fault's 429 carries no Retry-After header."""
    sandbox.add_faults([FaultRule("rate_limit")])
    answer = await post(http, sandbox)
    assert answer.status == 429
    assert "Retry-After" not in answer.headers


@pytest.mark.parametrize("bad", ["", "caf\u00e9", "a\r\nb"])
def test_retry_after_must_be_printable_ascii(bad: str) -> None:
    """A retry_after that could not go into a header as it is is refused at construction."""
    with pytest.raises(ValueError, match="retry_after"):
        FaultRule("rate_limit", retry_after=bad)


ISSUE_18_RULES = [
    {"action": "error_after", "campaign_id": "e", "status": 502},
    {"action": "trickle_body", "campaign_id": "tb", "delay_ms": 2},
    {"action": "trickle_headers", "campaign_id": "th", "delay_ms": 2},
    {"action": "echo_auth", "campaign_id": "a", "status": 401},
    {"action": "other_send_id", "campaign_id": "o"},
    {"action": "rate_limit", "campaign_id": "r", "retry_after": "30"},
    {"action": "status", "campaign_id": "d", "status": 503, "retry_after": DATE},
]


def _fault_file(tmp_path: Path) -> Path:
    path = tmp_path / "faults.json"
    path.write_text(json.dumps({"rules": ISSUE_18_RULES}))
    return path


def test_a_fault_file_reads_every_issue_18_action_and_field(tmp_path: Path) -> None:
    """load_faults reads the issue-18 actions with their status, delay and retry_after."""
    assert load_faults(str(_fault_file(tmp_path))) == (
        FaultRule("error_after", campaign_id="e", status=502),
        FaultRule("trickle_body", campaign_id="tb", delay_ms=2),
        FaultRule("trickle_headers", campaign_id="th", delay_ms=2),
        FaultRule("echo_auth", campaign_id="a", status=401),
        FaultRule("other_send_id", campaign_id="o"),
        FaultRule("rate_limit", campaign_id="r", retry_after="30"),
        FaultRule("status", campaign_id="d", status=503, retry_after=DATE),
    )


@pytest.mark.parametrize(
    ("rule", "field"),
    [
        ({"action": "trickle_body"}, "delay_ms"),
        ({"action": "trickle_headers", "delay_ms": 0}, "delay_ms"),
        ({"action": "error_after", "status": 200}, "status"),
        ({"action": "echo_auth", "status": 302}, "status"),
        ({"action": "rate_limit", "retry_after": 30}, "retry_after"),
    ],
)
def test_a_fault_file_refuses_bad_issue_18_rules(
    tmp_path: Path, rule: dict[str, object], field: str
) -> None:
    """A trickle without delay, a non-error status, a numeric retry_after: refused by field."""
    path = tmp_path / "faults.json"
    path.write_text(json.dumps({"rules": [rule]}))
    with pytest.raises(Exception, match=field) as info:
        load_faults(str(path))
    assert str(path) in str(info.value)


async def test_the_sandbox_flag_serves_a_fault_files_issue_18_rules(
    http: aiohttp.ClientSession,
    sandbox_factory: SandboxFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """`provisioner sandbox --faults FILE` puts the rules in the config, and a sandbox
    serving that config answers each of them as the direct tests above say."""
    seen: list[SandboxConfig] = []
    monkeypatch.setattr("provisioner.sandbox.server.serve", seen.append)
    assert cli.main(["sandbox", "--faults", str(_fault_file(tmp_path))]) == 0
    [config] = seen
    assert len(config.faults) == len(ISSUE_18_RULES)
    sandbox = await sandbox_factory(faults=config.faults)
    answers = {c: await post(http, sandbox, {"campaign_id": c}) for c in ("e", "a", "o", "r", "d")}
    assert {c: a.status for c, a in answers.items()} == {
        "e": 502, "a": 401, "o": 201, "r": 429, "d": 503,
    }  # fmt: skip
    assert f"Bearer {KEY}" in answers["a"].json()["message"]
    assert answers["o"].json()["send_id"].endswith("-other")
    assert [answers[c].headers["Retry-After"] for c in "rd"] == ["30", DATE]
    for campaign in ("tb", "th"):
        answer = await post(http, sandbox, {"campaign_id": campaign})
        assert answer.status == 201
    assert [e.campaign_id for e in sandbox.ledger.created] == ["e", "o", "tb", "th"]
