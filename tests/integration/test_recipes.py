"""The deployment recipes (deploy/, Dockerfile): run or parsed as far as this machine allows.

The cron wrapper really runs against the sandbox. The systemd units, the Kubernetes YAML
and the Dockerfile are parsed, and their command lines go through the real argument
parser; the external checkers (systemd-analyze, kubectl, a Docker engine) run when they
can work here and skip with the reason otherwise.
"""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import itertools
import os
import pwd
import re
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import tomllib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import orjson
import pytest
import yaml

from provisioner._cli.args import build_parser
from provisioner._config.settings import build_settings
from provisioner.sandbox.server import Sandbox
from tests.tools import tool

from .helpers import KEY, PYTHON, ROOT, assert_invariant, campaigns, cli_env, outputs, write_csv

DEPLOY = ROOT / "deploy"
WRAPPER = DEPLOY / "cron" / "run-provisioner.sh"
CRONTAB = DEPLOY / "cron" / "provisioner.cron"
SERVICE = DEPLOY / "systemd" / "provisioner.service"
TIMER = DEPLOY / "systemd" / "provisioner.timer"
CRONJOB = DEPLOY / "kubernetes" / "cronjob.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

#: Names that must never carry a literal value in a recipe.
SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSW", re.IGNORECASE)
#: What a Braze REST API key looks like (a UUID).
KEY_LIKE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
# -- the cron wrapper --------------------------------------------------------------------


class Cron:
    """A sandboxed install of the cron recipe: env file, manifest, paths, log."""

    def __init__(self, tmp_path: Path, url: str) -> None:
        self.env_file = tmp_path / "etc" / "provisioner.env"
        self.env_file.parent.mkdir()
        # The key and the endpoint live in the env file only, as in production.
        self.env_file.write_text(f"BRAZE_API_KEY={KEY}\nPROVISIONER_BASE_URL={url}\n")
        self.env_file.chmod(0o600)
        self.manifest = tmp_path / "campaigns.csv"
        self.out = tmp_path / "var" / "out"
        self.state = tmp_path / "var" / "state.sqlite3"
        self.log = tmp_path / "log" / "provisioner.log"
        self.lock = tmp_path / "run" / "provisioner.lock"
        self.lock.parent.mkdir()
        self.metrics = tmp_path / "textfile_collector" / "provisioner.prom"
        self.metrics.parent.mkdir()

    def env(self, **overrides: str) -> dict[str, str]:
        """The environment cron would give the wrapper, pointed at this sandbox."""
        env = {
            k: v
            for k, v in cli_env().items()
            if not k.startswith("PROVISIONER_") and k != "BRAZE_API_KEY"
        }
        env.update(
            PROVISIONER_ENV_FILE=str(self.env_file),
            PROVISIONER_MANIFEST=str(self.manifest),
            PROVISIONER_OUT=str(self.out),
            PROVISIONER_STATE=str(self.state),
            PROVISIONER_LOG=str(self.log),
            PROVISIONER_LOCK=str(self.lock),
            PROVISIONER_METRICS_FILE=str(self.metrics),
            PROVISIONER_USER="",  # tests run as whoever runs pytest (root on CI)
            PROVISIONER_BIN=f"{PYTHON} -m provisioner",
            PROVISIONER_RATE="10000",
        )
        env.update(overrides)
        return env

    async def start(self, **overrides: str) -> asyncio.subprocess.Process:
        """Start the wrapper in a new session, as cron does (its own process group)."""
        return await asyncio.create_subprocess_exec(
            str(WRAPPER),
            env=self.env(**overrides),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )

    async def run(self, **overrides: str) -> tuple[int, str]:
        """Run the wrapper to the end: (exit code, what cron would mail)."""
        proc = await self.start(**overrides)
        return await finish(proc)

    def log_events(self) -> list[dict[str, Any]]:
        """The JSON lines of the log (the closing human summary lines are plain text)."""
        text = self.log.read_text() if self.log.exists() else ""
        return [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]

    def events(self) -> list[str]:
        return [e["event"] for e in self.log_events()]


async def finish(proc: asyncio.subprocess.Process) -> tuple[int, str]:
    """Wait for a wrapper: (exit code, its stdout and stderr, i.e. the cron mail)."""
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, (stdout + stderr).decode()


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` if it never does (20 s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def fifo_manifest(path: Path, rows: list[tuple[str, str]]) -> AsyncIterator[None]:
    """A manifest the run reads but cannot finish until the block exits (a named pipe).

    The run holds its locks while it waits for the rest of the manifest, so the test
    decides when it ends: no sleeps, no timing.
    """
    os.mkfifo(path)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError:  # ENXIO: the run has not opened it yet
            if loop.time() > deadline:
                pytest.fail("the run never opened the manifest")
            await asyncio.sleep(0.02)
    try:
        os.set_blocking(fd, True)
        os.write(fd, b"campaign_id,send_id\n" + b"".join(f"{c},{s}\n".encode() for c, s in rows))
        yield
    finally:
        os.close(fd)


def lock_holder(state: Path) -> int | None:
    """The pid that the state store's lock file names, if any."""
    lock = state.with_name(state.name + ".lock")
    text = lock.read_bytes().strip() if lock.exists() else b""
    return int(orjson.loads(text)["pid"]) if text.startswith(b"{") else None


def lock_held(state: Path) -> bool:
    """True when the state store's lock file names a holder."""
    return lock_holder(state) is not None


def catches_sigterm(state: Path) -> bool:
    """True once the run holding ``state`` has its SIGTERM handler installed (Linux /proc)."""
    pid = lock_holder(state)
    if pid is None:
        return False
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.M).group(1), 16)  # type: ignore[union-attr]
    return bool(caught & (1 << (signal.SIGTERM - 1)))


async def test_cron_wrapper_runs_and_writes_outputs(sandbox: Sandbox, tmp_path: Path) -> None:
    """The wrapper takes the key from the env file, runs, exits 0, writes outputs, mails nothing."""
    cron = Cron(tmp_path, sandbox.url)
    write_csv(cron.manifest, campaigns(20))
    code, mail = await cron.run()
    assert code == 0, mail
    assert mail == ""  # nothing for cron to mail on success
    assert_invariant(cron.out, 20)
    summary = outputs(cron.out)[3]
    assert summary["counts"]["created"] == 20
    assert sandbox.ledger.total == 20
    events = cron.events()
    assert events[0] == "run_started"
    # Under --log-format json the closing lines are a JSON event too (issue 13).
    assert events[-2:] == ["run_finished", "run_summary"]
    assert KEY not in cron.log.read_text()
    assert re.search(r"^provisioner_run_exit_code\{.*\} 0(\.0)?$", cron.metrics.read_text(), re.M)
    # The state store is where PROVISIONER_STATE says: a second night skips every row.
    code, mail = await cron.run()
    assert (code, mail) == (0, "")
    assert outputs(cron.out)[3]["counts"]["skipped"] == 20
    assert sandbox.ledger.total == 20


async def test_cron_wrapper_keeps_exit_code_and_mails_what_to_do(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Exit 1 is passed through; the cron mail names failures.jsonl and the closing lines."""
    cron = Cron(tmp_path, sandbox.url)
    write_csv(cron.manifest, [*campaigns(3), ("", "s-empty")])
    code, mail = await cron.run()
    assert code == 1
    first, *closing = mail.splitlines()
    assert "exited 1" in first
    assert str(cron.out / "failures.jsonl") in first
    assert "row_failed" in cron.events()
    (summary,) = [e for e in cron.log_events() if e["event"] == "run_summary"]
    assert closing == summary["lines"]  # counts, top errors, run id, the next step


async def test_cron_wrapper_refuses_a_readable_env_file(sandbox: Sandbox, tmp_path: Path) -> None:
    """An env file that group or others can read stops the wrapper with 2; nothing runs."""
    cron = Cron(tmp_path, sandbox.url)
    write_csv(cron.manifest, campaigns(3))
    cron.env_file.chmod(0o644)
    code, mail = await cron.run()
    assert code == 2
    assert "chmod 600" in mail
    assert not cron.out.exists()
    assert sandbox.ledger.total == 0


async def test_second_concurrent_run_exits_75(sandbox: Sandbox, tmp_path: Path) -> None:
    """While a run works, a second exits 75 at the job lock, and without it at its own locks."""
    cron = Cron(tmp_path, sandbox.url)
    first = await cron.start()
    # The others read a file of their own: the pipe is the first run's.
    other = str(write_csv(tmp_path / "other.csv", campaigns(2)))
    async with fifo_manifest(cron.manifest, campaigns(2)):
        await wait_until(lambda: lock_held(cron.state), "the first run to hold the state store")
        # The recipe: flock -n on the job lock, refused with 75 before anything starts.
        code, mail = await cron.run(PROVISIONER_MANIFEST=other)
        assert (code, mail) == (75, "")
        assert cron.events().count("job_lock_busy") == 1
        # Without the job lock (PROVISIONER_LOCK empty) the run's own locks say 75: the
        # --out folder's (taken first, the same --out) or the state store's.
        code, mail = await cron.run(PROVISIONER_MANIFEST=other, PROVISIONER_LOCK="")
        assert (code, mail) == (75, "")
        assert "by another run (pid" in cron.log.read_text()
    code, mail = await finish(first)
    assert (code, mail) == (0, "")
    assert outputs(cron.out)[3]["counts"]["created"] == 2


async def test_cron_wrapper_passes_sigterm_on_once(sandbox: Sandbox, tmp_path: Path) -> None:
    """SIGTERM to the wrapper's process group reaches the run once; it exits 143 with outputs."""
    cron = Cron(tmp_path, sandbox.url)
    wrapper = await cron.start()
    async with fifo_manifest(cron.manifest, campaigns(1)):
        await wait_until(lambda: catches_sigterm(cron.state), "the run to handle SIGTERM")
        os.killpg(wrapper.pid, signal.SIGTERM)
        # The wrapper logs after it has passed the signal on. (The run itself acts on it
        # once the read it is blocked in returns, i.e. when the pipe closes.)
        await wait_until(lambda: "signal_forwarded" in cron.events(), "the wrapper's trap")
    code, mail = await finish(wrapper)
    assert (code, mail) == (143, "")  # interrupted: quiet, the next night resumes
    assert outputs(cron.out)[3]["exit_code"] == 143
    events = cron.events()
    assert events.count("signal_forwarded") == 1
    assert "run_stopping" in events
    assert "drain_abandoned" not in events  # the run got one SIGTERM, not two


def _can_switch_to_nobody() -> str | None:
    """Why the privilege-drop test cannot run here, or None if it can."""
    if os.geteuid() != 0:
        return "the wrapper drops privileges only when started as root"
    if shutil.which("setpriv") is None:
        return "setpriv (util-linux) is not installed"
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        return "there is no user 'nobody' to switch to"
    return None


@pytest.mark.skipif(_can_switch_to_nobody() is not None, reason=str(_can_switch_to_nobody()))
async def test_cron_wrapper_runs_the_command_unprivileged(tmp_path: Path) -> None:
    """Started as root, the wrapper runs the command as PROVISIONER_USER with the env file's key."""
    cron = Cron(tmp_path, "http://127.0.0.1:9")
    nobody = pwd.getpwnam("nobody").pw_uid
    # pytest's tmp_path is root-only: the stand-in command lives where nobody can run it.
    with tempfile.TemporaryDirectory() as public:
        Path(public).chmod(0o755)
        shim = Path(public) / "provisioner"
        shim.write_text(
            '#!/bin/sh\nprintf "uid=%s key=%s args=%s\\n" "$(id -u)" "$BRAZE_API_KEY" "$*"\n'
        )
        shim.chmod(0o755)
        code, mail = await cron.run(PROVISIONER_USER="nobody", PROVISIONER_BIN=str(shim))
    assert code == 0, mail
    assert f"uid={nobody} key={KEY} args=run {cron.manifest} --out {cron.out}" in mail
    assert stat.S_IMODE(cron.env_file.stat().st_mode) == 0o600


def test_cron_wrapper_is_valid_bash() -> None:
    """run-provisioner.sh parses (bash -n), is executable and sets -euo pipefail."""
    subprocess.run(["bash", "-n", str(WRAPPER)], check=True)
    assert os.access(WRAPPER, os.X_OK)
    assert "set -euo pipefail" in WRAPPER.read_text()


@pytest.mark.skipif(tool("shellcheck") is None, reason="shellcheck is not installed")
def test_cron_wrapper_passes_shellcheck() -> None:
    """run-provisioner.sh has no shellcheck findings."""
    program = tool("shellcheck")
    assert program is not None
    done = subprocess.run([program, str(WRAPPER)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout


_CRON_FIELDS = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]  # m h dom mon dow


def _cron_field_ok(field: str, low: int, high: int) -> bool:
    """A numeric cron field: *, N, N-M, lists of those, each with an optional /step."""
    for part in field.split(","):
        m = re.fullmatch(r"(\*|(\d+)(?:-(\d+))?)(?:/(\d+))?", part)
        if m is None:
            return False
        numbers = [int(n) for n in m.group(2, 3, 4)[:2] if n is not None]
        if any(not low <= n <= high for n in numbers):
            return False
    return True


def test_crontab_line() -> None:
    """The cron file has one job: five valid time fields, a user, the wrapper; no key in it."""
    jobs: list[list[str]] = []
    for raw in CRONTAB.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*\s*=.*", line):
            name = line.split("=", 1)[0].strip()
            assert not SECRET_NAME.search(name), f"{name} does not belong in a crontab"
            continue
        jobs.append(line.split(None, 6))
    assert len(jobs) == 1
    # The /etc/cron.d format: minute hour day-of-month month day-of-week user command.
    fields = jobs[0]
    assert len(fields) == 7, fields
    for value, (low, high) in zip(fields[:5], _CRON_FIELDS, strict=True):
        assert _cron_field_ok(value, low, high), value
    assert fields[5] == "root"  # to read the root-only env file; the run itself drops it
    assert PurePosixPath(shlex.split(fields[6])[0]).name == WRAPPER.name


# -- systemd -----------------------------------------------------------------------------


def _unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    # systemd continues a line with a trailing backslash; configparser keeps the newline.
    parser.read_string(path.read_text().replace("\\\n", " "))
    return parser


def _argv_values(argv: list[str]) -> dict[str, str]:
    """--flag value pairs of a command line."""
    return {a: b for a, b in itertools.pairwise(argv) if a.startswith("--")}


def test_systemd_units() -> None:
    """The service: oneshot, own user, key file, state under StateDirectory, 3 is success."""
    unit = _unit(SERVICE)
    service = unit["Service"]
    assert service["Type"] == "oneshot"
    assert service["User"] not in ("", "root", "0")
    assert service["EnvironmentFile"].startswith("/etc/provisioner/")
    assert "Environment" not in service  # nothing, let alone a key, in the unit itself
    assert "3" in service["SuccessExitStatus"].split()
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["PrivateTmp"] == "yes"
    argv = shlex.split(service["ExecStart"])
    assert argv[0].endswith("/provisioner")
    build_parser().parse_args(argv[1:])  # the real parser accepts the command line
    flags = _argv_values(argv)
    state_dir = Path("/var/lib") / service["StateDirectory"]
    writable = [state_dir] + [
        Path(p.lstrip("-")) for p in service.get("ReadWritePaths", "").split()
    ]
    for flag in ("--state", "--out", "--metrics-file"):
        path = Path(flags[flag])
        assert any(path.is_relative_to(w) for w in writable), f"{flag} {path} is read-only"
    assert Path(flags["--state"]).parent == state_dir
    timer = _unit(TIMER)
    assert timer["Timer"]["OnCalendar"]
    assert timer["Timer"]["Persistent"] == "true"
    assert timer["Timer"]["RandomizedDelaySec"]
    assert timer["Install"]["WantedBy"] == "timers.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd-analyze verify finds nothing to say about the units."""
    # verify insists that ExecStart's program exists: point it at this checkout's entry
    # point (or any executable) instead of the installed /usr/local/bin/provisioner.
    program = shutil.which("provisioner") or shutil.which("true")
    assert program is not None
    text = SERVICE.read_text().replace("/usr/local/bin/provisioner", program)
    (tmp_path / SERVICE.name).write_text(text)
    shutil.copy(TIMER, tmp_path / TIMER.name)
    done = subprocess.run(
        ["systemd-analyze", "verify", SERVICE.name, TIMER.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    ours = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if "provisioner." in line or "Unknown" in line
    ]
    assert done.returncode == 0, done.stdout + done.stderr
    assert ours == []


# -- Kubernetes --------------------------------------------------------------------------


def _k8s_docs() -> list[dict[str, Any]]:
    with CRONJOB.open() as fh:
        return [d for d in yaml.safe_load_all(fh) if d is not None]


def _walk(node: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair in a YAML tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield str(k), v
            yield from _walk(v)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def test_kubernetes_cronjob(tmp_path: Path) -> None:
    """CronJob: Forbid, key from a Secret, state on an RWO PVC, non-root, read-only, Never."""
    docs = _k8s_docs()
    by_kind = {d["kind"]: d for d in docs}
    assert "Secret" not in by_kind  # created by hand, never committed
    cronjob = by_kind["CronJob"]["spec"]
    assert cronjob["concurrencyPolicy"] == "Forbid"
    job = cronjob["jobTemplate"]["spec"]
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    rules = job["podFailurePolicy"]["rules"]
    assert any(3 in r.get("onExitCodes", {}).get("values", []) for r in rules)
    assert pod["terminationGracePeriodSeconds"] >= 60
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["limits"]["memory"]

    # The key: BRAZE_API_KEY from a Secret; no literal value for anything key-like.
    env = {e["name"]: e for e in container["env"]}
    assert env["BRAZE_API_KEY"]["valueFrom"]["secretKeyRef"]["name"]
    for name, entry in env.items():
        if SECRET_NAME.search(name):
            assert "value" not in entry, f"{name} has a literal value"
    for key, value in _walk(docs):
        if SECRET_NAME.search(key) and isinstance(value, str) and key != "key":
            pytest.fail(f"literal {key}: {value!r} in {CRONJOB.name}")
    assert not KEY_LIKE.search(CRONJOB.read_text())

    # The command line is one the real parser takes, with a config the real loader takes.
    args = container["args"]
    build_parser().parse_args(args)
    flags = _argv_values(args)
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_mount = mounts[str(PurePosixPath(flags["--config"]).parent)]
    config_map = by_kind["ConfigMap"]
    assert volumes[config_mount["name"]]["configMap"]["name"] == config_map["metadata"]["name"]
    toml_text = config_map["data"][PurePosixPath(flags["--config"]).name]
    assert "api_key" not in tomllib.loads(toml_text).get("braze", {})
    (tmp_path / "provisioner.toml").write_text(toml_text)
    build_settings(
        manifest="m.csv",
        out_dir=tmp_path,
        cli={},
        env={"BRAZE_API_KEY": "x"},
        config_path=tmp_path / "provisioner.toml",
    )

    # The state store's folder is a writable mount of the PVC (ReadWriteOnce).
    state_mount = mounts[str(PurePosixPath(flags["--state"]).parent)]
    assert not state_mount.get("readOnly", False)
    claim = volumes[state_mount["name"]]["persistentVolumeClaim"]["claimName"]
    pvc = by_kind["PersistentVolumeClaim"]
    assert pvc["metadata"]["name"] == claim
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    # Everything the run writes is on a writable volume (the root filesystem is not).
    for path in (flags["--out"], "/tmp"):
        assert any(
            PurePosixPath(path).is_relative_to(p) and not m.get("readOnly", False)
            for p, m in mounts.items()
        ), f"{path} is not on a writable volume"


def _kubectl_unusable() -> str | None:
    """Why ``kubectl apply --dry-run=client`` cannot run here, or None if it can."""
    if shutil.which("kubectl") is None:
        return "kubectl is not installed"
    done = subprocess.run(
        ["kubectl", "version", "--request-timeout=5s", "-o", "json"],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        return (
            "kubectl is installed but reaches no API server, and even a client dry run"
            " needs one to map kinds to resources"
        )
    return None


def test_kubectl_dry_run() -> None:
    """kubectl apply --dry-run=client accepts every object (when a cluster is reachable)."""
    reason = _kubectl_unusable()
    if reason is not None:
        pytest.skip(reason)
    subprocess.run(
        ["kubectl", "apply", "--dry-run=client", "-f", str(CRONJOB)],
        check=True,
        capture_output=True,
    )


# -- Docker ------------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_static() -> None:
    """Multi-stage slim build, non-root USER, ENTRYPOINT provisioner, no key-like ENV/ARG."""
    steps = _dockerfile()
    froms = [rest for word, rest in steps if word == "FROM"]
    assert len(froms) >= 2
    args = dict(rest.split("=", 1) for word, rest in steps if word == "ARG" and "=" in rest)
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    assert any(word == "RUN" and "pip wheel" in rest for word, rest in steps)
    final = steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM") :]
    (user,) = [rest for word, rest in final if word == "USER"]
    assert user.split(":")[0] not in ("root", "0")
    assert user.split(":")[0].isdigit()  # numeric: Kubernetes' runAsNonRoot can check it
    assert [orjson.loads(rest) for word, rest in final if word == "ENTRYPOINT"] == [["provisioner"]]
    assert [orjson.loads(rest) for word, rest in final if word == "CMD"] == [["--help"]]
    volumes = [orjson.loads(rest) for word, rest in final if word == "VOLUME"]
    assert ["/var/lib/provisioner"] in volumes
    assert not KEY_LIKE.search(DOCKERFILE.read_text())
    for word, rest in steps:
        if word in ("ENV", "ARG"):
            for name in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", rest) or [rest.split()[0]]:
                assert not SECRET_NAME.search(name), f"{word} {name} looks like a secret"
    for word, rest in steps:
        if word == "COPY" and "--from" not in rest:
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), source
    ignored = {line.strip() for line in DOCKERIGNORE.read_text().splitlines()}
    for entry in (".venv", ".git", "out", "tests", ".mypy_cache", ".pytest_cache"):
        assert entry in ignored, entry
    for needed in ("pyproject.toml", "README.md", "provisioner"):
        assert needed not in ignored, needed


def _docker_engine_missing() -> str | None:
    """Why no image can be built here, or None when a Docker engine answers."""
    if shutil.which("docker") is None:
        return "the docker CLI is not installed"
    done = subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=30)
    if done.returncode != 0:
        return "the docker CLI is installed but no Docker engine answers `docker info`"
    return None


@pytest.mark.timeout(1200)
def test_docker_image_builds_and_runs_as_non_root() -> None:
    """The image builds, `docker run IMAGE --help` works, and the process is not root."""
    reason = _docker_engine_missing()
    if reason is not None:
        pytest.skip(reason)
    tag = f"provisioner-recipe-test:{uuid.uuid4().hex[:12]}"
    subprocess.run(["docker", "build", "-t", tag, str(ROOT)], check=True, capture_output=True)
    try:
        helped = subprocess.run(
            ["docker", "run", "--rm", tag, "--help"], capture_output=True, text=True, check=True
        )
        assert "usage: provisioner" in helped.stdout
        who = subprocess.run(
            ["docker", "run", "--rm", "--entrypoint", "id", tag, "-u"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert who.stdout.strip() not in ("", "0")
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, check=False)
