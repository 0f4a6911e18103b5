"""The sandbox over real loopback sockets: Braze's answers, quota, repeats, faults, ledger."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import ssl
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from multidict import CIMultiDictProxy

from provisioner.errors import ConfigError, UsageError
from provisioner.sandbox.server import (
    FaultRule,
    Sandbox,
    SandboxConfig,
    load_faults,
    workspace_label,
)
from provisioner.testing import FakeClock
from tests.conftest import SandboxFactory, TlsFiles

KEY = "sandbox-key"
RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
_ABSENT = object()


@dataclass(frozen=True)
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def remaining(self) -> int:
        return int(self.headers["X-RateLimit-Remaining"])


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


async def post(
    http: aiohttp.ClientSession,
    sandbox: Sandbox,
    body: object = _ABSENT,
    *,
    key: str | None = KEY,
    data: bytes | None = None,
) -> Answer:
    """POST /sends/id/create; ``body`` is JSON-encoded, ``data`` is sent as is."""
    if data is None:
        data = orjson.dumps({"campaign_id": "camp-1"} if body is _ABSENT else body)
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    async with http.post(f"{sandbox.url}/sends/id/create", data=data, headers=headers) as resp:
        return Answer(resp.status, resp.headers, await resp.read())


async def ledger(http: aiohttp.ClientSession, sandbox: Sandbox) -> Any:
    async with http.get(f"{sandbox.url}/sandbox/ledger") as resp:
        assert resp.status == 200
        return await resp.json()


# -- basics --------------------------------------------------------------------------


async def test_health(http: aiohttp.ClientSession, sandbox: Sandbox) -> None:
    """GET /sandbox/health answers 200 {"ok": true}."""
    async with http.get(f"{sandbox.url}/sandbox/health") as resp:
        assert resp.status == 200
        assert await resp.json() == {"ok": True}


async def test_success_shape(http: aiohttp.ClientSession, sandbox: Sandbox) -> None:
    """A valid request is answered 201 {"message": "success", "send_id": <the given id>}."""
    answer = await post(http, sandbox, {"campaign_id": "camp-1", "send_id": "s-1"})
    assert answer.status == 201
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.json() == {"message": "success", "send_id": "s-1"}
    assert [(e.campaign_id, e.send_id) for e in sandbox.ledger.created] == [("camp-1", "s-1")]


@pytest.mark.parametrize("body", [{"campaign_id": "c"}, {"campaign_id": "c", "send_id": ""}])
async def test_generated_ids_are_unique_ascii(
    http: aiohttp.ClientSession, sandbox: Sandbox, body: dict[str, str]
) -> None:
    """Without a send_id (absent or ""), each creation gets a new ASCII id of <= 64 chars."""
    answers = await asyncio.gather(*(post(http, sandbox, body) for _ in range(40)))
    ids = [a.json()["send_id"] for a in answers]
    assert all(a.status == 201 for a in answers)
    assert len(set(ids)) == 40
    assert all(i.isascii() and 0 < len(i) <= 64 for i in ids)
    assert len(sandbox.ledger.created) == 40


async def test_null_send_id_counts_as_absent(http: aiohttp.ClientSession, sandbox: Sandbox) -> None:
    """send_id null is treated like no send_id: an id is generated."""
    answer = await post(http, sandbox, {"campaign_id": "c", "send_id": None})
    assert answer.status == 201
    assert answer.json()["send_id"].startswith("sbx_")


async def test_64_char_ascii_send_id_is_accepted(
    http: aiohttp.ClientSession, sandbox: Sandbox
) -> None:
    """A send_id of exactly 64 ASCII characters is within Braze's limit."""
    answer = await post(http, sandbox, {"campaign_id": "c", "send_id": "x" * 64})
    assert answer.status == 201
    assert answer.json()["send_id"] == "x" * 64


# -- auth ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "sandbox-key", "Basic sandbox-key", "Bearer ", "Bearer not-the-key"],
)
async def test_bad_authorization_is_401(
    http: aiohttp.ClientSession, sandbox: Sandbox, authorization: str | None
) -> None:
    """Missing, malformed or unknown keys get 401 without quota headers or creation."""
    headers = {} if authorization is None else {"Authorization": authorization}
    async with http.post(
        f"{sandbox.url}/sends/id/create", json={"campaign_id": "c"}, headers=headers
    ) as resp:
        body = await resp.json()
        assert resp.status == 401
        assert "X-RateLimit-Limit" not in resp.headers
    assert body["message"].startswith("Invalid API key")
    assert "not-the-key" not in body["message"]
    assert sandbox.ledger.created == []
    assert sandbox.ledger.count(401) == 1


async def test_bearer_scheme_is_case_insensitive(
    http: aiohttp.ClientSession, sandbox: Sandbox
) -> None:
    """ "bearer <key>" is accepted like "Bearer <key>" (RFC 7235 schemes ignore case)."""
    async with http.post(
        f"{sandbox.url}/sends/id/create",
        json={"campaign_id": "c"},
        headers={"Authorization": f"bearer {KEY}"},
    ) as resp:
        assert resp.status == 201


# -- validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b"{not json", "body"),
        (b'["campaign_id"]', "body"),
        (b"{}", "campaign_id"),
        (b'{"campaign_id": 12}', "campaign_id"),
        (b'{"campaign_id": ""}', "campaign_id"),
        (b'{"campaign_id": "c", "send_id": 7}', "send_id"),
        (orjson.dumps({"campaign_id": "c", "send_id": "x" * 65}), "send_id"),
        (orjson.dumps({"campaign_id": "c", "send_id": "caf\u00e9"}), "send_id"),
    ],
    ids=["not-json", "array", "no-campaign", "campaign-number", "campaign-empty",
         "send-number", "send-65-chars", "send-non-ascii"],
)  # fmt: skip
async def test_invalid_body_is_400_naming_the_field(
    http: aiohttp.ClientSession, sandbox: Sandbox, data: bytes, field: str
) -> None:
    """Each body rule gives 400 with errors naming the field; nothing created, no quota."""
    answer = await post(http, sandbox, data=data)
    assert answer.status == 400
    doc = answer.json()
    assert doc["message"].startswith("Invalid request")
    assert doc["errors"]
    assert doc["errors"][0].startswith(f"{field}:")
    assert answer.remaining == 100
    assert sandbox.ledger.created == []


async def test_body_over_4mb_is_413(http: aiohttp.ClientSession, sandbox: Sandbox) -> None:
    """A body over 4 MB gets 413 and creates nothing."""
    padding = "x" * (4 * 1024 * 1024)
    answer = await post(http, sandbox, {"campaign_id": "c", "pad": padding})
    assert answer.status == 413
    assert answer.remaining == 100
    assert sandbox.ledger.created == []


async def test_chunked_body_over_4mb_is_413(http: aiohttp.ClientSession, sandbox: Sandbox) -> None:
    """A chunked body (no Content-Length) is cut off at 4 MB with 413 too."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"x" * (1024 * 1024)

    headers = {"Authorization": f"Bearer {KEY}"}
    url = f"{sandbox.url}/sends/id/create"
    async with http.post(url, data=chunks(), headers=headers) as resp:
        assert resp.status == 413
        assert "X-RateLimit-Reset" in resp.headers


# -- headers and quota -----------------------------------------------------------------


async def test_rate_limit_headers_on_every_answer(
    http: aiohttp.ClientSession, sandbox_factory: SandboxFactory
) -> None:
    """201, 400, 429 and 5xx answers for a known key all carry the three headers."""
    clock = FakeClock(1_000_000.0)
    sandbox = await sandbox_factory(clock=clock, daily_quota=1, window_seconds=60)
    sandbox.add_faults([FaultRule("status", campaign_id="broken", status=503)])
    answers = [
        await post(http, sandbox),
        await post(http, sandbox, {"campaign_id": ""}),
        await post(http, sandbox),
        await post(http, sandbox, {"campaign_id": "broken"}),
    ]
    assert [a.status for a in answers] == [201, 400, 429, 503]
    for answer in answers:
        for name in RATE_HEADERS:
            # CIMultiDict: the lookup does not depend on the case the server used.
            assert answer.headers[name.lower()] == answer.headers[name]
        assert answer.headers["X-RateLimit-Limit"] == "1"
        assert answer.headers["X-RateLimit-Reset"] == str(1_000_020)
        assert answer.remaining == 0


async def test_quota_429_after_n_creations(
    http: aiohttp.ClientSession, sandbox_factory: SandboxFactory
) -> None:
    """With quota 3, three creations succeed (Remaining 2, 1, 0) and the 4th gets 429."""
    sandbox = await sandbox_factory(daily_quota=3)
    answers = [await post(http, sandbox) for _ in range(4)]
    assert [a.status for a in answers] == [201, 201, 201, 429]
    assert [a.remaining for a in answers] == [2, 1, 0, 0]
    assert answers[3].json() == {"message": "Rate limit exceeded"}
    assert len(sandbox.ledger.created) == 3
    assert sandbox.ledger.count(429) == 1


async def test_window_reset_restores_quota(
    http: aiohttp.ClientSession, sandbox_factory: SandboxFactory
) -> None:
    """Windows are fixed and epoch-aligned: at Reset the quota is whole again and Reset moves on."""
    clock = FakeClock(1_000_005.0)  # window [1_000_000, 1_000_010) with S=10
    sandbox = await sandbox_factory(clock=clock, daily_quota=2, window_seconds=10)
    assert (await post(http, sandbox)).status == 201
    clock.now = 1_000_009.9
    second, third = await post(http, sandbox), await post(http, sandbox)
    assert (second.status, third.status) == (201, 429)
    assert third.headers["X-RateLimit-Reset"] == "1000010"
    clock.now = 1_000_010.0
    fourth = await post(http, sandbox)
    assert fourth.status == 201
    assert fourth.remaining == 1
    assert fourth.headers["X-RateLimit-Reset"] == "1000020"
    assert [e.at for e in sandbox.ledger.created] == [1_000_005.0, 1_000_009.9, 1_000_010.0]


async def test_quota_is_per_key(
    http: aiohttp.ClientSession, sandbox_factory: SandboxFactory
) -> None:
    """Each key is its own workspace: spending one key's quota leaves the other's whole."""
    sandbox = await sandbox_factory(api_keys=("key-a", "key-b"), daily_quota=1)
    assert (await post(http, sandbox, key="key-a")).status == 201
    assert (await post(http, sandbox, key="key-a")).status == 429
    other = await post(http, sandbox, key="key-b")
    assert other.status == 201
    assert other.remaining == 0
    labels = [e.workspace for e in sandbox.ledger.created]
    assert labels == [workspace_label("key-a"), workspace_label("key-b")]


# -- repeats -------------------------------------------------------------------------


async def test_repeat_is_free_by_default(
    http: aiohttp.ClientSession, sandbox_factory: SandboxFactory
) -> None:
    """A created (campaign, send_id) sent again succeeds with the same id, even with the
    quota spent, and adds no ledger entry."""
    sandbox = await sandbox_factory(daily_quota=1)
    body = {"campaign_id": "c", "send_id": "s"}
    first = await post(http, sandbox, body)
    repeat = await post(http, sandbox, body)
    assert (first.status, repeat.status) == (201, 201)
    assert repeat.json() == {"message": "success", "send_id": "s"}
    assert repeat.remaining == 0
    assert len(sandbox.ledger.created) == 1
    # Same send_id under another campaign is a new combination: quota applies.
    assert (await post(http, sandbox, {"campaign_id": "d", "send_id": "s"})).status == 429


async def test_repeat_of_a_generated_id_is_free(
    http: aiohttp.ClientSession, sandbox: Sandbox
) -> None:
    """Sending back an id the sandbox generated is a repeat of that combination."""
    generated = (await post(http, sandbox, {"campaign_id": "c"})).json()["send_id"]
    repeat = await post(http, sandbox, {"campaign_id": "c", "send_id": generated})
    assert repeat.status == 201
    assert repeat.remaining == 99
    assert len(sandbox.ledger.created) == 1


async def test_repeat_counts_when_configured(
    http: aiohttp.ClientSession, sandbox_factory: SandboxFactory
) -> None:
    """With repeat_counts, a repeat spends quota, is recorded again, and can get 429."""
    sandbox = await sandbox_factory(daily_quota=2, repeat_counts=True)
    body = {"campaign_id": "c", "send_id": "s"}
    answers = [await post(http, sandbox, body) for _ in range(3)]
    assert [a.status for a in answers] == [201, 201, 429]
    assert [(e.campaign_id, e.send_id) for e in sandbox.ledger.created] == [("c", "s")] * 2


# -- faults --------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 403, 404, 500, 503])
async def test_status_fault(http: aiohttp.ClientSession, sandbox: Sandbox, status: int) -> None:
    """A status rule answers that code with a JSON message and headers, creating nothing."""
    sandbox.add_faults([FaultRule("status", status=status, times=1)])
    answer = await post(http, sandbox)
    assert answer.status == status
    assert isinstance(answer.json()["message"], str)
    assert answer.remaining == 100
    assert sandbox.ledger.created == []
    assert (await post(http, sandbox)).status == 201  # times=1: spent


async def test_status_400_fault_says_no_campaign(
    http: aiohttp.ClientSession, sandbox: Sandbox
) -> None:
    """The 400 fault mimics Braze's unknown-campaign answer."""
    sandbox.add_faults([FaultRule("status", status=400)])
    assert (await post(http, sandbox)).json()["message"] == (
        "Invalid campaign_id: no campaign found"
    )


async def test_rate_limit_fault(http: aiohttp.ClientSession, sandbox: Sandbox) -> None:
    """rate_limit answers 429 with Remaining 0 and creates nothing."""
    sandbox.add_faults([FaultRule("rate_limit", times=1)])
    answer = await post(http, sandbox)
    assert answer.status == 429
    assert answer.remaining == 0
    assert sandbox.ledger.created == []


async def test_queued_fault_creates_without_send_id(
    http: aiohttp.ClientSession, sandbox: Sandbox
) -> None:
    """queued creates (ledger, quota) but answers 202 {"message": "queued"}."""
    sandbox.add_faults([FaultRule("queued")])
    answer = await post(http, sandbox, {"campaign_id": "c", "send_id": "s"})
    assert answer.status == 202
    assert answer.json() == {"message": "queued"}
    assert answer.remaining == 99
    assert len(sandbox.ledger.created) == 1


@pytest.mark.parametrize(("action", "created"), [("drop_before", 0), ("drop_after", 1)])
async def test_drop_faults_disconnect(
    http: aiohttp.ClientSession, sandbox: Sandbox, action: str, created: int
) -> None:
    """drop_* close the connection unanswered; only drop_after has created, and a retry
    of the same combination after drop_after is a free repeat."""
    sandbox.add_faults([FaultRule(action, times=1)])
    body = {"campaign_id": "c", "send_id": "s"}
    with pytest.raises(aiohttp.ClientError):
        await post(http, sandbox, body)
    assert len(sandbox.ledger.created) == created
    assert sandbox.ledger.count("dropped") == 1
    retry = await post(http, sandbox, body)
    assert retry.status == 201
    assert len(sandbox.ledger.created) == 1


async def test_delay_fault_outlasts_client_timeout(sandbox: Sandbox) -> None:
    """delay creates, then answers too late for a client with a short read timeout."""
    sandbox.add_faults([FaultRule("delay", delay_ms=2000, times=1)])
    timeout = aiohttp.ClientTimeout(total=5, sock_read=0.05)
    async with aiohttp.ClientSession(timeout=timeout) as short:
        with pytest.raises(asyncio.TimeoutError):
            await post(short, sandbox)
    assert len(sandbox.ledger.created) == 1


async def test_not_json_fault(http: aiohttp.ClientSession, sandbox: Sandbox) -> None:
    """not_json creates, then answers 201 with an HTML body."""
    sandbox.add_faults([FaultRule("not_json")])
    answer = await post(http, sandbox)
    assert answer.status == 201
    assert answer.headers["Content-Type"].startswith("text/html")
    assert answer.body == b"<html>oops</html>"
    assert answer.remaining == 99
    assert len(sandbox.ledger.created) == 1


async def test_no_send_id_fault(http: aiohttp.ClientSession, sandbox: Sandbox) -> None:
    """no_send_id creates, then answers 201 {"message": "success"} without the id."""
    sandbox.add_faults([FaultRule("no_send_id")])
    answer = await post(http, sandbox)
    assert (answer.status, answer.json()) == (201, {"message": "success"})
    assert len(sandbox.ledger.created) == 1


async def test_slow_body_fault_arrives_whole(http: aiohttp.ClientSession, sandbox: Sandbox) -> None:
    """slow_body creates and streams a complete, valid success body in pieces."""
    sandbox.add_faults([FaultRule("slow_body", delay_ms=5)])
    answer = await post(http, sandbox, {"campaign_id": "c", "send_id": "s"})
    assert (answer.status, answer.json()) == (201, {"message": "success", "send_id": "s"})
    assert answer.remaining == 99


async def test_slow_body_fault_trips_read_timeout(sandbox: Sandbox) -> None:
    """slow_body stalls between chunks long enough for a client read timeout, after creating."""
    sandbox.add_faults([FaultRule("slow_body", delay_ms=1000)])
    timeout = aiohttp.ClientTimeout(total=5, sock_read=0.05)
    async with aiohttp.ClientSession(timeout=timeout) as short:
        with pytest.raises(asyncio.TimeoutError):
            await post(short, sandbox)
    assert len(sandbox.ledger.created) == 1


async def test_fault_matching_order_campaign_and_times(
    http: aiohttp.ClientSession, sandbox: Sandbox
) -> None:
    """Rules match in order, campaign_id filters, and times=N stops after N uses."""
    sandbox.add_faults(
        [
            FaultRule("status", campaign_id="only-this", status=404),
            FaultRule("status", status=503, times=2),
            FaultRule("status", status=500, times=1),
        ]
    )
    statuses = [(await post(http, sandbox, {"campaign_id": "only-this"})).status]
    statuses += [(await post(http, sandbox)).status for _ in range(4)]
    assert statuses == [404, 503, 503, 500, 201]


async def test_fault_probability_is_seeded(
    http: aiohttp.ClientSession, sandbox_factory: SandboxFactory
) -> None:
    """A probabilistic rule hits the same requests in two sandboxes with the same seed."""
    runs = []
    for _ in range(2):
        rule = FaultRule("status", status=500, probability=0.5)
        sandbox = await sandbox_factory(seed=7, faults=(rule,))
        runs.append([(await post(http, sandbox)).status for _ in range(30)])
    assert runs[0] == runs[1]
    assert set(runs[0]) == {201, 500}


async def test_faults_admin_endpoints(http: aiohttp.ClientSession, sandbox: Sandbox) -> None:
    """POST /sandbox/faults appends rules, DELETE clears them; no key needed."""
    url = f"{sandbox.url}/sandbox/faults"
    rules = {"rules": [{"action": "status", "status": 503}, {"action": "queued"}]}
    async with http.post(url, json=rules) as resp:
        assert (resp.status, await resp.json()) == (200, {"rules": 2})
    assert (await post(http, sandbox)).status == 503
    async with http.delete(url) as resp:
        assert (resp.status, await resp.json()) == (200, {"rules": 0})
    assert (await post(http, sandbox)).status == 201


@pytest.mark.parametrize(
    "payload",
    [
        b"nope",
        b'{"rules": "x"}',
        b'{"rules": [{"action": "explode"}]}',
        b'{"rules": [{"action": "delay"}]}',
        b'{"rules": [{"action": "status", "status": 200}]}',
        b'{"rules": [{"action": "queued", "colour": "red"}]}',
        b'{"rules": [{"action": "queued", "times": 0}]}',
        b'{"rules": [{"action": "redirect", "status": 404}]}',
        b'{"rules": [{"action": "redirect", "location": "https://a b/"}]}',
        b'{"rules": [{"action": "redirect", "location": 7}]}',
    ],
)
async def test_faults_admin_rejects_bad_rules(
    http: aiohttp.ClientSession, sandbox: Sandbox, payload: bytes
) -> None:
    """A bad fault document is refused with 400 and a message; no rule is added."""
    async with http.post(f"{sandbox.url}/sandbox/faults", data=payload) as resp:
        assert resp.status == 400
        assert (await resp.json())["message"]
    assert (await post(http, sandbox)).status == 201


def test_load_faults_reads_rules(tmp_path: Path) -> None:
    """load_faults turns {"rules": [...]} into FaultRule values, in order."""
    path = tmp_path / "faults.json"
    path.write_text(
        json.dumps(
            {
                "rules": [
                    {"action": "status", "status": 503, "times": 2},
                    {"action": "delay", "campaign_id": "c", "delay_ms": 1500},
                ]
            }
        )
    )
    assert load_faults(str(path)) == (
        FaultRule("status", status=503, times=2),
        FaultRule("delay", campaign_id="c", delay_ms=1500),
    )


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot read fault file"),
        ("{oops", "not valid JSON"),
        ('{"rules": {}}', '"rules" list'),
        ('{"rules": [{"action": "queued"}, {"action": "explode"}]}', "rule #2"),
        ('{"rules": [{"action": "status", "probability": 2}]}', "probability"),
    ],
)
def test_load_faults_errors_name_file_and_rule(
    tmp_path: Path, content: str | None, expected: str
) -> None:
    """A bad fault file raises ConfigError naming the file and what is wrong."""
    path = tmp_path / "faults.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_faults(str(path))
    assert str(path) in str(info.value)
    assert expected in str(info.value)


async def test_redirect_fault_defaults(http: aiohttp.ClientSession, sandbox: Sandbox) -> None:
    """redirect answers 307 to a host that never resolves, without rate-limit headers, and
    creates nothing; the ledger counts it under "307"."""
    sandbox.add_faults([FaultRule("redirect", times=1)])
    async with http.post(
        f"{sandbox.url}/sends/id/create",
        json={"campaign_id": "c", "send_id": "s"},
        headers={"Authorization": f"Bearer {KEY}"},
        allow_redirects=False,
    ) as resp:
        assert resp.status == 307
        assert resp.headers["Location"] == "https://moved.example.invalid/sends/id/create"
        assert not any(name in resp.headers for name in RATE_HEADERS)
    assert sandbox.ledger.created == []
    assert sandbox.ledger.by_status == {"307": 1}
    assert (await post(http, sandbox)).status == 201  # times=1: spent


@pytest.mark.parametrize("status", [301, 302, 303, 308])
async def test_redirect_fault_status_and_location(
    http: aiohttp.ClientSession, sandbox: Sandbox, status: int
) -> None:
    """A redirect rule answers its status with the rule's location."""
    target = "http://127.0.0.1:9/elsewhere"
    sandbox.add_faults([FaultRule("redirect", status=status, location=target)])
    async with http.post(
        f"{sandbox.url}/sends/id/create",
        json={"campaign_id": "c"},
        headers={"Authorization": f"Bearer {KEY}"},
        allow_redirects=False,
    ) as resp:
        assert (resp.status, resp.headers["Location"]) == (status, target)
    assert sandbox.ledger.count(status) == 1


def test_redirect_rule_from_json(tmp_path: Path) -> None:
    """A fault file's redirect rule keeps its location; a missing status means 307."""
    path = tmp_path / "faults.json"
    path.write_text(
        json.dumps({"rules": [{"action": "redirect", "location": "https://other.example/x"}]})
    )
    (rule,) = load_faults(str(path))
    assert (rule.status, rule.location, rule.creates) == (307, "https://other.example/x", False)


# -- https ---------------------------------------------------------------------------


async def test_tls_sandbox_serves_https(
    sandbox_factory: SandboxFactory, tls_files: TlsFiles
) -> None:
    """With tls_cert/tls_key the sandbox serves https; a client trusting the CA gets 201,
    one that does not fails the handshake before sending anything."""
    sandbox = await sandbox_factory(tls_cert=str(tls_files.cert), tls_key=str(tls_files.key))
    assert sandbox.url.startswith("https://127.0.0.1:")
    trusting = ssl.create_default_context(cafile=str(tls_files.ca))
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=5),
        connector=aiohttp.TCPConnector(ssl=trusting),
    ) as session:
        assert (await post(session, sandbox)).status == 201
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as untrusting:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await post(untrusting, sandbox)
    assert sandbox.ledger.total == 1


def test_tls_needs_cert_and_key(tls_files: TlsFiles) -> None:
    """--tls-cert without --tls-key (or the reverse) is a usage error."""
    with pytest.raises(UsageError, match="--tls-cert and --tls-key"):
        SandboxConfig(tls_cert=str(tls_files.cert))
    with pytest.raises(UsageError, match="--tls-cert and --tls-key"):
        SandboxConfig(tls_key=str(tls_files.key))


async def test_unloadable_tls_files_are_a_usage_error(tmp_path: Path, tls_files: TlsFiles) -> None:
    """A certificate that cannot be loaded stops the start with a message naming the files."""
    bogus = tmp_path / "not-a-cert.pem"
    bogus.write_text("hello")
    sandbox = Sandbox(SandboxConfig(tls_cert=str(bogus), tls_key=str(tls_files.key)))
    with pytest.raises(UsageError, match=r"not-a-cert\.pem"):
        await sandbox.start()


async def test_cli_sandbox_tls_flags(tls_files: TlsFiles) -> None:
    """`provisioner sandbox --tls-cert --tls-key` prints an https URL that serves."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "provisioner",
        "sandbox",
        "--tls-cert",
        str(tls_files.cert),
        "--tls-key",
        str(tls_files.key),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=Path(__file__).parents[2],
    )
    try:
        assert proc.stdout is not None
        url = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip()
        assert url.startswith("https://127.0.0.1:")
        trusting = ssl.create_default_context(cafile=str(tls_files.ca))
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusting)) as session,
            session.get(f"{url}/sandbox/health") as resp,
        ):
            assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0


# -- error_rate ----------------------------------------------------------------------


async def test_error_rate_is_reproducible_with_a_seed(
    http: aiohttp.ClientSession, sandbox_factory: SandboxFactory
) -> None:
    """Same seed, same requests: the same 5xx at the same places, and 5xx never create."""
    runs = []
    for _ in range(2):
        sandbox = await sandbox_factory(seed=42, error_rate=0.3)
        answers = [await post(http, sandbox) for _ in range(40)]
        runs.append([a.status for a in answers])
        assert all(a.remaining <= 100 for a in answers)  # headers present on 5xx too
        assert len(sandbox.ledger.created) == runs[-1].count(201)
    assert runs[0] == runs[1]
    assert set(runs[0]) - {201} <= {500, 502, 503}
    assert set(runs[0]) & {500, 502, 503}


# -- ledger --------------------------------------------------------------------------


async def test_ledger_document(
    http: aiohttp.ClientSession, sandbox_factory: SandboxFactory
) -> None:
    """GET /sandbox/ledger lists creations by workspace label and counts answers by status."""
    secret = "super-secret-key-123"
    sandbox = await sandbox_factory(api_keys=(secret,), daily_quota=1)
    sandbox.add_faults([FaultRule("drop_before", campaign_id="gone")])
    await post(http, sandbox, {"campaign_id": "c", "send_id": "s"}, key=secret)
    await post(http, sandbox, {"campaign_id": "c", "send_id": "t"}, key=secret)
    await post(http, sandbox, {"campaign_id": ""}, key=secret)
    await post(http, sandbox, key="wrong")
    with pytest.raises(aiohttp.ClientError):
        await post(http, sandbox, {"campaign_id": "gone"}, key=secret)
    doc = await ledger(http, sandbox)
    [entry] = doc["created"]
    assert set(entry) == {"workspace", "campaign_id", "send_id", "at"}
    assert entry["workspace"] == workspace_label(secret)
    assert (entry["campaign_id"], entry["send_id"]) == ("c", "s")
    assert doc["requests"] == {
        "total": 5,
        "by_status": {"201": 1, "429": 1, "400": 1, "401": 1, "dropped": 1},
    }
    assert secret not in json.dumps(doc)


def test_workspace_label_hides_the_key() -> None:
    """The label is "ws-" + 10 hex chars of sha256(key): stable, never the key itself."""
    label = workspace_label("sandbox-key")
    assert label == "ws-" + hashlib.sha256(b"sandbox-key").hexdigest()[:10]
    assert "sandbox-key" not in label
    assert label != workspace_label("sandbox-key2")


# -- config and serve() ----------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"daily_quota": -1},
        {"window_seconds": 0},
        {"error_rate": 1.5},
        {"latency_ms": -1.0},
        {"port": 70000},
        {"api_keys": ()},
        {"api_keys": ("ok", "has space")},
    ],
)
def test_bad_config_is_a_usage_error(overrides: dict[str, Any]) -> None:
    """Impossible settings raise UsageError naming the flag, never echoing a key."""
    with pytest.raises(UsageError) as info:
        SandboxConfig(**overrides)
    assert "--" in str(info.value)
    assert "has space" not in str(info.value)


async def test_busy_port_is_a_usage_error(sandbox: Sandbox) -> None:
    """Starting on a port already in use raises UsageError naming host and port."""
    port = int(sandbox.url.rsplit(":", 1)[1])
    with pytest.raises(UsageError, match=f"127.0.0.1:{port}"):
        await Sandbox(SandboxConfig(port=port)).start()


async def test_serve_prints_url_first_and_stops_on_sigterm(
    http: aiohttp.ClientSession,
) -> None:
    """serve() prints its URL as the first stdout line, serves, and exits 0 on SIGTERM."""
    code = (
        "from provisioner.sandbox.server import SandboxConfig, serve; "
        "serve(SandboxConfig(api_keys=('k1', 'k2')))"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=Path(__file__).parents[2],  # the repository root, so `provisioner` imports
    )
    try:
        assert proc.stdout is not None
        url = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip()
        assert url.startswith("http://127.0.0.1:")
        async with http.get(f"{url}/sandbox/health") as resp:
            assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert out.decode().split() == [workspace_label("k1"), workspace_label("k2")]
    assert b"k1" not in out
