"""The API key never leaves the process except in ``Authorization: Bearer`` to the base URL.

Every scenario runs the real CLI at ``--log-level debug`` with a recognisable key, then
scans stdout, stderr and every file the run left (outputs, summary, metrics file, the
state store's database, WAL and lock, temporary files) for the key and for its base64,
URL-encoded and hex forms. A recording middleware in the sandbox checks where the key
travelled: in the Authorization header as ``Bearer <key>``, and nowhere else (no other
header, no path, no query, no body). The records hold booleans, never the key.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import resource
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, quote_plus

import aiohttp
import pytest
import structlog
from aiohttp import web

from provisioner._config.access import REDACTED
from provisioner._core import logs
from provisioner.api import build_settings, run, run_async
from provisioner.errors import ProvisionerError
from provisioner.sandbox.server import FaultRule, Sandbox, SandboxConfig

from .helpers import (
    PYTHON,
    ROOT,
    campaigns,
    cli_env,
    read_jsonl,
    start_cli,
    wait_for_created,
    write_csv,
)
from .test_cli import provisioner, run_args
from .test_filesystem import results_on_dev_full

# Characters that base64 and URL-encoding change, so that each form is a different string.
SECRET = "SECRET-KEY+0123456789/abcdef="
SECRET_B = "SECRET-KEY-B+fedcba9876543210="


def forms(key: str) -> list[str]:
    """The key as it could leak: raw, base64 (at each alignment, standard and URL-safe),
    URL-encoded and hex."""
    raw = key.encode()
    found = {key, quote(key, safe=""), quote_plus(key), raw.hex(), raw.hex().upper()}
    for pad in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(b"\x00" * pad + raw).decode()
            # Keep only the characters that depend on the key's bytes alone.
            found.add(text[4 if pad else 0 : -4])
    return sorted(found)


LEAK_FORMS = [*forms(SECRET), *forms(SECRET_B)]


def leaks(text: str | bytes) -> list[str]:
    """The leak forms found in ``text`` (bytes are scanned raw, as the disk holds them)."""
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
    return [form for form in LEAK_FORMS if form.encode() in data]


def scan_tree(root: Path, *, except_files: Iterable[Path] = ()) -> dict[str, list[str]]:
    """Leaks in every file under ``root`` (but the named key files), by path."""
    skip = {p.resolve() for p in except_files}
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.resolve() not in skip:
            hits = leaks(path.read_bytes())
            if hits:
                found[str(path)] = hits
    return found


@dataclass
class Sighting:
    """Where the key showed up in one request the sandbox received (no key stored)."""

    host: str  # the sandbox the request reached ("127.0.0.1:PORT")
    path: str
    bearer: str  # "A"/"B": Authorization was exactly "Bearer SECRET"/"Bearer SECRET_B"
    elsewhere: list[str] = field(default_factory=list)  # other places that held a form
    echoed: bool = False  # the sandbox's answer held a form of the key (echo_auth)


def recorder(sightings: list[Sighting]) -> Any:
    """An aiohttp middleware noting, for each request, where any form of the key was."""

    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        body = await request.read()
        auth = request.headers.get("Authorization", "")
        bearer = {f"Bearer {SECRET}": "A", f"Bearer {SECRET_B}": "B"}.get(auth, "")
        sighting = Sighting(request.host, request.path_qs, bearer)
        for name, value in request.headers.items():
            if name.lower() != "authorization" and leaks(value):
                sighting.elsewhere.append(f"header {name}")
        if leaks(request.path_qs):
            sighting.elsewhere.append("path or query")
        if leaks(body):
            sighting.elsewhere.append("body")
        sightings.append(sighting)
        response = await handler(request)
        if isinstance(response, web.Response) and isinstance(response.body, bytes):
            sighting.echoed = bool(leaks(response.body))
        return response

    return record


class Recorded(Protocol):
    """``await start(**SandboxConfig overrides)``: a sandbox whose requests are recorded."""

    async def __call__(self, **overrides: Any) -> Sandbox: ...


@pytest.fixture
async def recorded() -> AsyncIterator[tuple[Recorded, list[Sighting]]]:
    """Sandboxes accepting SECRET and SECRET_B, all recording into one list of sightings."""
    sightings: list[Sighting] = []
    started: list[Sandbox] = []

    async def start(**overrides: Any) -> Sandbox:
        config = dataclasses.replace(
            SandboxConfig(api_keys=(SECRET, SECRET_B), daily_quota=1000), **overrides
        )
        sandbox = Sandbox(config, shutdown_timeout=0.1)
        sandbox.app.middlewares.append(recorder(sightings))
        await sandbox.start()
        started.append(sandbox)
        return sandbox

    yield start, sightings
    for sandbox in started:
        await sandbox.stop()


def assert_key_only_in_bearer(sightings: list[Sighting]) -> None:
    """Every request carried the key as `Authorization: Bearer <key>` and nowhere else."""
    assert sightings, "no request reached the sandbox"
    # The campaign check's listing carries the key the same way (and only there).
    paths = {s.path.partition("?")[0] for s in sightings}
    assert paths <= {"/sends/id/create", "/campaigns/list"}, paths
    assert all(s.bearer in ("A", "B") for s in sightings)
    assert all(not s.elsewhere for s in sightings), [s.elsewhere for s in sightings if s.elsewhere]


# -- the scenarios ---------------------------------------------------------------------------


@dataclass
class Ctx:
    """One scenario's world: its folder, sandbox starter and the texts collected to scan."""

    tmp: Path
    start: Recorded
    texts: list[str] = field(default_factory=list)
    key_files: list[Path] = field(default_factory=list)
    exit_codes: list[int] = field(default_factory=list)
    #: host -> the keys ("A", "B") that may reach it; empty: only SECRET ("A") anywhere.
    expect_keys: dict[str, set[str]] = field(default_factory=dict)
    #: What the sandboxes saw (and answered), request by request.
    sightings: list[Sighting] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        return cli_env({"BRAZE_API_KEY": SECRET, "TMPDIR": str(self.tmp), **extra})

    async def cli(self, *args: str, env: dict[str, str] | None = None) -> int:
        code, out, err = await provisioner(*args, env=env or self.env())
        self.texts += [out, err]
        self.exit_codes.append(code)
        return code

    async def run(self, url: str, manifest: Path, *extra: str, **env: str) -> int:
        return await self.cli(
            *run_args(url, self.tmp, str(manifest)), "--log-level", "debug", *extra,
            env=self.env(**env),
        )  # fmt: skip


def manifest(ctx: Ctx, rows: list[tuple[str, str]] | None = None) -> Path:
    return write_csv(ctx.tmp / "m.csv", rows if rows is not None else campaigns(5))


async def plain_success(ctx: Ctx) -> None:
    sandbox = await ctx.start()
    assert await ctx.run(sandbox.url, manifest(ctx)) == 0


async def console_log_format(ctx: Ctx) -> None:
    sandbox = await ctx.start()
    assert await ctx.run(sandbox.url, manifest(ctx), "--log-format", "console") == 0


async def server_errors_retried(ctx: Ctx) -> None:
    sandbox = await ctx.start()
    sandbox.add_faults([FaultRule(action="status", status=503, times=4)])
    assert await ctx.run(sandbox.url, manifest(ctx), "--config", str(fast_config(ctx))) == 0


async def quota_spent_deferred(ctx: Ctx) -> None:
    sandbox = await ctx.start(daily_quota=2)
    assert await ctx.run(sandbox.url, manifest(ctx), "--max-wait", "0") == 3


async def rate_limited_429(ctx: Ctx) -> None:
    sandbox = await ctx.start()
    sandbox.add_faults([FaultRule(action="rate_limit")])
    assert await ctx.run(sandbox.url, manifest(ctx), "--max-wait", "0") == 3


async def outage_beyond_max_wait(ctx: Ctx) -> None:
    sandbox = await ctx.start()
    sandbox.start_outage(600, "refuse")
    config = fast_config(ctx)
    assert await ctx.run(
        sandbox.url, manifest(ctx), "--max-wait", "0", "--config", str(config)
    ) in (
        1,
        3,
    )


async def key_refused(ctx: Ctx) -> None:
    sandbox = await ctx.start(api_keys=("some-other-key",))
    assert await ctx.run(sandbox.url, manifest(ctx)) == 4


async def in_doubt_and_failures(ctx: Ctx) -> None:
    sandbox = await ctx.start()
    sandbox.add_faults(
        [
            FaultRule(action="drop_after", campaign_id="n000000"),
            FaultRule(action="status", status=400, campaign_id="c000001"),
            FaultRule(action="queued", campaign_id="n000001"),
        ]
    )
    rows = [*campaigns(3), *campaigns(2, with_send_id=False, prefix="n"), ("", "bad")]
    assert await ctx.run(sandbox.url, manifest(ctx, rows)) == 1


async def server_echoes_the_key(ctx: Ctx) -> None:
    """A server quoting the Authorization header (raw, base64, URL-encoded) in its error
    messages: a 400, a retried 503, and a 502 for a row in doubt."""
    sandbox = await ctx.start()
    sandbox.add_faults(
        [
            FaultRule(action="echo_auth", status=400, campaign_id="c000001"),
            FaultRule(action="echo_auth", status=503, campaign_id="c000002", times=1),
            FaultRule(action="echo_auth", status=502, campaign_id="n000000"),
        ]
    )
    rows = [*campaigns(3), *campaigns(1, with_send_id=False, prefix="n")]
    assert await ctx.run(sandbox.url, manifest(ctx, rows), "--config", str(fast_config(ctx))) == 1
    # Not vacuous: the answers to the 400, the 503 and the 502 really held the key...
    assert sum(s.echoed for s in ctx.sightings) == 3, ctx.sightings
    # ... and what was written of them shows the marker where the key was.
    failures = {f["campaign_id"]: f for f in read_jsonl(ctx.tmp / "out" / "failures.jsonl")}
    assert sorted(failures) == ["c000001", "n000000"]
    assert all(REDACTED in f["message"] for f in failures.values()), failures
    stored = sqlite3.connect(ctx.tmp / "state.sqlite3")
    try:
        messages = dict(stored.execute("SELECT campaign_id, message FROM outcomes"))
    finally:
        stored.close()
    assert [c for c in ("c000001", "n000000") if REDACTED not in messages[c]] == [], messages


async def validate_status_export(ctx: Ctx) -> None:
    sandbox = await ctx.start()
    m = manifest(ctx)
    assert await ctx.run(sandbox.url, m, "--metrics-file", str(ctx.tmp / "p.prom")) == 0
    state = str(ctx.tmp / "state.sqlite3")
    assert await ctx.cli("validate", str(m), "--state", state) == 0
    assert await ctx.cli("validate", str(m), "--state", state, "--json") == 0
    assert await ctx.cli("status", "--state", state) == 0
    assert await ctx.cli("status", "--state", state, "--json") == 0
    run_id = next(
        line.split('"run_id": "')[1].split('"')[0]
        for line in ctx.texts[-2].splitlines()
        if '"run_id"' in line
    )
    assert await ctx.cli("export", "--run", run_id, "--out", str(ctx.tmp / "exported"),
                         "--state", state) == 0  # fmt: skip


async def two_workspaces_env_and_file(ctx: Ctx) -> None:
    sandbox = await ctx.start()  # us: its key from the environment
    eu = await ctx.start()  # eu: its key from a key file
    key_file = ctx.tmp / "key-b"
    key_file.write_text(SECRET_B + "\n")
    ctx.key_files.append(key_file)
    config = ctx.tmp / "ws.toml"
    config.write_text(
        f'[[workspaces]]\nname = "us"\napi_key_env = "KEY_US"\nbase_url = "{sandbox.url}"\n'
        f'[[workspaces]]\nname = "eu"\napi_key_file = "{key_file}"\nbase_url = "{eu.url}"\n'
    )
    rows = [("c1", "s1", "us"), ("c2", "s2", "eu"), ("c3", "", "eu"), ("c4", "s4", "nowhere")]
    m = write_csv(ctx.tmp / "m.csv", rows, header=("campaign_id", "send_id", "workspace"))
    env = cli_env({"KEY_US": SECRET, "TMPDIR": str(ctx.tmp)})
    env.pop("BRAZE_API_KEY")
    code = await ctx.cli(
        *run_args(sandbox.url, ctx.tmp, str(m)), "--config", str(config), "--log-level", "debug",
        env=env,
    )  # fmt: skip
    assert code == 1, ctx.texts[-1]  # the unknown workspace's row fails
    assert await ctx.cli("validate", str(m), "--config", str(config), env=env) == 1
    # Each key went only to its own workspace's base URL.
    ctx.expect_keys = {sandbox.url.split("//")[1]: {"A"}, eu.url.split("//")[1]: {"B"}}


async def refused_before_sending(ctx: Ctx) -> None:
    """Errors raised before any request: bad key characters, a literal key in the config,
    an unreachable base URL (connection refused), a corrupt store, a busy store."""
    sandbox = await ctx.start()
    m = manifest(ctx)
    assert await ctx.run(sandbox.url, m, BRAZE_API_KEY=SECRET + " \x01") == 2
    literal = ctx.tmp / "literal.toml"
    literal.write_text(f'[braze]\napi_key = "{SECRET}"\n')
    ctx.key_files.append(literal)
    assert await ctx.run(sandbox.url, m, "--config", str(literal)) == 2
    pasted = ctx.tmp / "pasted.toml"
    pasted.write_text(f'[braze]\napi_key_env = "{SECRET}"\n')
    ctx.key_files.append(pasted)
    assert await ctx.run(sandbox.url, m, "--config", str(pasted)) == 2
    assert await ctx.cli(*run_args(f"https://u:{SECRET}@example.com", ctx.tmp, str(m))) == 2
    corrupt = ctx.tmp / "corrupt.sqlite3"
    corrupt.write_bytes(b"\x00" * 4096)
    assert await ctx.run(sandbox.url, m, "--state", str(corrupt)) == 2
    refused = await ctx.run(
        "http://127.0.0.1:9", m, "--config", str(fast_config(ctx)), "--max-wait", "0"
    )
    assert refused == 4  # a port that refuses every connection: unreachable (issue 13)


async def interrupted(ctx: Ctx) -> None:
    sandbox = await ctx.start(latency_ms=30)
    m = manifest(ctx, campaigns(200))
    proc = await start_cli(
        *run_args(sandbox.url, ctx.tmp, str(m)),
        "--log-level",
        "debug",
        "--concurrency",
        "2",
        env=ctx.env(),
    )
    await wait_for_created(sandbox)
    proc.send_signal(signal.SIGTERM)
    out, err = await proc.communicate()
    ctx.texts += [out.decode(), err.decode()]
    assert proc.returncode == 143, err.decode()


async def filesystem_faults(ctx: Ctx) -> None:
    """Output files on a full disk after sending, and a state store that cannot grow."""
    if not Path("/dev/full").exists():
        pytest.skip("/dev/full (writes fail with ENOSPC) is Linux-only")
    sandbox = await ctx.start()
    out = ctx.tmp / "out"
    out.mkdir()
    shimmed = results_on_dev_full(ctx.tmp)["PYTHONPATH"]
    assert await ctx.run(sandbox.url, manifest(ctx), PYTHONPATH=shimmed) == 2
    limit = 64 * 1024
    code, out_text, err = await provisioner(
        *run_args(sandbox.url, ctx.tmp, str(manifest(ctx, campaigns(800, prefix="z")))),
        "--log-level", "debug", env=ctx.env(),
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
    )  # fmt: skip
    ctx.texts += [out_text, err]
    assert code == 2, err


def fast_config(ctx: Ctx) -> Path:
    """Short backoffs and timeouts, so that retry scenarios take well under a second."""
    path = ctx.tmp / "fast.toml"
    path.write_text(
        "[retry]\nbackoff_base = 0.01\nbackoff_cap = 0.02\nattempts = 3\nmax_time = 2\n"
        "[run]\nread_timeout = 1.0\nconnect_timeout = 0.5\n"
    )
    return path


SCENARIOS: dict[str, Callable[[Ctx], Awaitable[None]]] = {
    f.__name__: f
    for f in (
        plain_success,
        console_log_format,
        server_errors_retried,
        quota_spent_deferred,
        rate_limited_429,
        outage_beyond_max_wait,
        key_refused,
        in_doubt_and_failures,
        server_echoes_the_key,
        validate_status_export,
        two_workspaces_env_and_file,
        refused_before_sending,
        interrupted,
        filesystem_faults,
    )
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
async def test_key_never_leaves_the_process(
    recorded: tuple[Recorded, list[Sighting]], tmp_path: Path, name: str
) -> None:
    """At --log-level debug the key (raw, base64, URL-encoded, hex) is in no output, log,
    summary, metrics file, state store file or error text, and it travelled only as
    `Authorization: Bearer <key>` to the configured base URL."""
    start, sightings = recorded
    ctx = Ctx(tmp_path, start, sightings=sightings)
    await SCENARIOS[name](ctx)
    assert not [leaks(text) for text in ctx.texts if leaks(text)]
    assert not scan_tree(tmp_path, except_files=ctx.key_files)
    assert list(tmp_path.glob("state.sqlite3*")) or name == "refused_before_sending"
    if sightings:
        assert_key_only_in_bearer(sightings)
    assert name == "refused_before_sending" or sightings
    for s in sightings:
        assert s.bearer in ctx.expect_keys.get(s.host, {"A"}), (s.host, s.bearer)


async def test_redirect_is_not_followed_with_the_key(
    recorded: tuple[Recorded, list[Sighting]], tmp_path: Path
) -> None:
    """A 3xx from the base URL pointing at another server: the key never reaches it (no
    redirect is followed), and the failure text does not show the key."""
    start, sightings = recorded
    elsewhere = await start()  # records every request it gets: there must be none
    redirector = web.Application()

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(f"{elsewhere.url}/sends/id/create")

    redirector.router.add_post("/sends/id/create", redirect)
    runner = web.AppRunner(redirector, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        ctx = Ctx(tmp_path, start)
        code = await ctx.run(f"http://127.0.0.1:{port}", manifest(ctx, campaigns(2)))
        assert code == 4  # a redirect stops the workspace: the base URL is wrong
    finally:
        await runner.cleanup()
    assert not sightings
    assert elsewhere.ledger.total == 0
    assert not [leaks(text) for text in ctx.texts if leaks(text)]
    assert not scan_tree(tmp_path)


async def test_python_api_results_and_errors_never_show_the_key(
    recorded: tuple[Recorded, list[Sighting]], tmp_path: Path
) -> None:
    """From Python: Settings, RunResult (returned and from the blocking `run`) and every
    raised error show no form of the key in str/repr/args; neither do debug logs."""
    start, sightings = recorded
    sandbox = await start(daily_quota=3)
    m = write_csv(tmp_path / "m.csv", campaigns(5))
    stream = io.StringIO()
    saved = structlog.get_config()
    logs.configure("json", "debug", stream=stream)
    texts: list[str] = []
    try:

        def settings(**cli: Any) -> Any:
            values = {"base_url": sandbox.url, "state_path": str(tmp_path / "s.sqlite3"),
                      "rate": 5000.0, "max_wait": 0.0, **cli}  # fmt: skip
            return build_settings(manifest=str(m), out_dir=tmp_path / "out", cli=values,
                                  env={"BRAZE_API_KEY": SECRET})  # fmt: skip

        s = settings()
        texts += [repr(s), str(s), repr(s.public()), repr(s.workspaces), repr(s.api_key)]
        result = await run_async(s)
        assert result.exit_code == 3
        texts += [repr(result), str(result.summary), repr(result.counts)]
        blocking = await asyncio.to_thread(run, settings(force=True))
        texts += [repr(blocking)]
        errors: list[BaseException] = []
        attempts: tuple[Callable[[], object], ...] = (
            lambda: build_settings(manifest=str(m), out_dir=tmp_path, cli={},
                                   env={"BRAZE_API_KEY": SECRET + "\n\x01"}),
            lambda: build_settings(manifest=str(m), out_dir=tmp_path, cli={},
                                   env={"BRAZE_API_KEY_X": SECRET},
                                   config_path=_write(tmp_path / "c.toml",
                                                      f'[braze]\ntoken = "{SECRET}"\n')),
        )  # fmt: skip
        for attempt in attempts:
            with pytest.raises(ProvisionerError) as info:
                attempt()
            errors.append(info.value)
        not_a_store = settings(state_path=str(m))
        with pytest.raises(ProvisionerError) as info:
            await asyncio.to_thread(run, not_a_store)
        errors.append(info.value)
        for exc in errors:
            texts += [
                str(exc),
                repr(exc),
                repr(exc.args),
                repr(exc.__cause__),
                repr(exc.__context__),
            ]
    finally:
        structlog.configure(**saved)
    texts.append(stream.getvalue())
    assert '"event"' in texts[-1]  # the debug logs were captured
    assert not [leaks(text) for text in texts if leaks(text)]
    assert not scan_tree(tmp_path, except_files=[tmp_path / "c.toml"])
    assert_key_only_in_bearer(sightings)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_logged_exceptions_do_not_show_locals() -> None:
    """A traceback logged at debug (JSON or console) does not print local variables, where a
    header dict or a revealed key could sit."""
    for fmt in ("json", "console"):
        stream = io.StringIO()
        saved = structlog.get_config()
        logs.configure(fmt, "debug", stream=stream)
        try:
            headers = {"Authorization": f"Bearer {SECRET}"}
            try:
                raise RuntimeError("boom")
            except RuntimeError:
                logs.get_logger("test").exception("failed", size=len(headers))
        finally:
            structlog.configure(**saved)
        assert "boom" in stream.getvalue()
        assert not leaks(stream.getvalue()), fmt


async def test_sandbox_process_does_not_print_the_key(tmp_path: Path) -> None:
    """`provisioner sandbox --api-key KEY` prints its URL and the workspace label, never
    the key, while serving a run with that key and until it stops."""
    proc = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "provisioner", "sandbox", "--api-key", SECRET, "--api-key", SECRET_B,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=cli_env(), cwd=ROOT,
    )  # fmt: skip
    assert proc.stdout is not None
    url = (await proc.stdout.readline()).decode().strip()
    try:
        m = write_csv(tmp_path / "m.csv", [*campaigns(3), ("c000009", "")])
        code, out, err = await provisioner(
            *run_args(url, tmp_path, str(m)), "--log-level", "debug",
            env=cli_env({"BRAZE_API_KEY": SECRET}),
        )  # fmt: skip
        assert code == 0, err
        status = await provisioner("status", "--state", str(tmp_path / "state.sqlite3"))
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{url}/sandbox/ledger") as resp,
        ):
            ledger = await resp.text()
        assert '"created"' in ledger
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, sandbox_err = await proc.communicate()
    texts = [url, rest.decode(), sandbox_err.decode(), out, err, *status[1:], ledger]
    assert rest.decode().startswith("ws-")
    assert not [leaks(text) for text in texts if leaks(text)]
    assert not scan_tree(tmp_path)


def test_leak_forms_are_distinct_and_found() -> None:
    """The scanner finds each form of the key (so a clean scan means something)."""
    assert len(set(forms(SECRET))) >= 6
    for form in forms(SECRET):
        assert leaks(f"xx{form}yy") == [form] or form in leaks(f"xx{form}yy")
    assert leaks(base64.b64encode(f"Bearer {SECRET}".encode()).decode())
    assert leaks(quote_plus(f"api_key={SECRET}"))
    assert not leaks("SECRET-KEY")
    assert sys.version_info >= (3, 11)
