"""The shipped crontab recipe under Debian's real cron daemon, against the sandbox (slow:
cron starts jobs on minute boundaries, so the test waits up to a minute for it).

The daemon is Debian's ``cron`` (installed, or its binary fetched once from the package:
tests/tools.py). Its folders are compiled in (/etc/cron.d, /var/spool/cron, /run for its
pid file, /usr/sbin/sendmail for its mail), so it runs in a private mount namespace
(``unshare --mount``) where those are bind mounts of the test's own folders: it sees only
the test's crontab files, and nothing on the machine is written or left behind. Each
crontab file is deploy/cron/provisioner.cron as shipped but for the schedule (every
minute), the wrapper's path (this checkout's) and PROVISIONER_ENV_FILE (the test's env
file, built from deploy/provisioner.env.example). Cron needs root; so does the namespace.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from provisioner.sandbox.server import Sandbox
from tests.tools import CRON, debian_tool, missing

from .helpers import KEY, assert_invariant, campaigns, outputs, write_csv
from .test_recipes import CRONTAB, DEPLOY, WRAPPER

pytestmark = pytest.mark.slow

ENV_EXAMPLE = DEPLOY / "provisioner.env.example"
#: The installed program, as /usr/local/bin/provisioner is in docs/operations.md.
PROVISIONER = Path(sys.executable).parent / "provisioner"

#: Run inside the new mount namespace: $1 the test's folder, $2 the cron binary.
NAMESPACE = r"""
set -euo pipefail
root=$1
mount --bind "$root/cron.d" /etc/cron.d
mount --bind "$root/spool" /var/spool
mount --bind "$root/run" /run
# /usr/sbin as it is plus the fake sendmail: links into a second view of the real one.
mount --bind /usr/sbin "$root/sbin-real"
for f in "$root"/sbin-real/*; do ln -s "$f" "$root/sbin/"; done
ln -sf "$root/sendmail" "$root/sbin/sendmail"
mount --bind "$root/sbin" /usr/sbin
# Foreground; -L 15 logs every job's start, end and failure to syslog, where there is one.
exec "$2" -f -L 15
"""

#: cron's mailer: each call leaves its arguments and the message in a file of its own.
SENDMAIL = """#!/bin/sh
f=$(mktemp "{mail}/mail.XXXXXX")
{{ printf 'ARGV %s\\n' "$*"; cat; }} >"$f"
"""


def _why_not_here() -> str | None:
    """Why the daemon cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "Debian's cron runs /etc/cron.d jobs only as root, and these tests are not root"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    for folder in ("/etc/cron.d", "/var/spool"):
        if not Path(folder).is_dir():
            return f"{folder} does not exist to mount the test's folder over"
    probe = subprocess.run(
        ["unshare", "--mount", "true"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        return f"no private mount namespace here (unshare --mount: {probe.stderr.strip()})"
    return None


def _run_as() -> tuple[str, int, int] | None:
    """The unprivileged user the wrapper drops to (name, uid, gid): nobody, if this
    checkout's provisioner runs as nobody; else None and the run stays root."""
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        return None
    if shutil.which("setpriv") is None:
        return None
    ids = [f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--init-groups"]
    probe = subprocess.run(
        ["setpriv", *ids, "--", str(PROVISIONER), "--version"],
        capture_output=True,
        cwd="/",
        check=False,
    )
    return ("nobody", nobody.pw_uid, nobody.pw_gid) if probe.returncode == 0 else None


class Install:
    """One installation of the cron recipe in ``folder``: env file, config, manifest."""

    def __init__(self, folder: Path, url: str, user: tuple[str, int, int] | None) -> None:
        self.folder = folder
        self.env_file = folder / "etc" / "provisioner.env"
        self.config = folder / "etc" / "provisioner.toml"
        self.manifest = folder / "etc" / "campaigns.csv"
        self.out = folder / "var" / "out"
        self.state = folder / "var" / "state.sqlite3"
        self.log = folder / "log" / "provisioner.log"
        self.metrics = folder / "textfile_collector" / "provisioner.prom"
        for path in (self.env_file, self.state, self.metrics):
            path.parent.mkdir(parents=True)
            if user is not None and path is not self.env_file:
                os.chown(path.parent, user[1], user[2])  # as the service user's folders
        # docs/operations.md: base_url lives in the config file, the key in the env file.
        self.config.write_text(f'[braze]\nbase_url = "{url}"\n')
        values = {
            "BRAZE_API_KEY": KEY,
            "PROVISIONER_METRICS_FILE": str(self.metrics),
            "PROVISIONER_CONFIG": str(self.config),
            "PROVISIONER_MANIFEST": str(self.manifest),
            "PROVISIONER_OUT": str(self.out),
            "PROVISIONER_STATE": str(self.state),
            "PROVISIONER_LOG": str(self.log),
        }
        extra = {
            "PROVISIONER_LOCK": str(folder / "provisioner.lock"),
            "PROVISIONER_USER": user[0] if user else "",
            "PROVISIONER_BIN": str(PROVISIONER),
        }
        self.env_file.touch(mode=0o600)
        self.env_file.write_text(env_file_from_example(values) + _lines(extra))

    def crontab(self) -> str:
        """deploy/cron/provisioner.cron with its job every minute, run from this checkout,
        with this installation's env file."""
        lines = []
        for line in CRONTAB.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#") and "=" not in line.split()[0]:
                fields = line.split(None, 6)
                assert fields[6] == "/usr/local/sbin/run-provisioner.sh", fields
                lines.append(f"PROVISIONER_ENV_FILE={self.env_file}")
                line = " ".join(["*", "*", "*", "*", "*", fields[5], str(WRAPPER)])
            lines.append(line)
        return "\n".join(lines) + "\n"

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def log_events(self) -> list[dict[str, Any]]:
        """The JSON lines of the log."""
        return [orjson.loads(line) for line in self.log_text().splitlines() if line[:1] == "{"]


def _lines(values: dict[str, str]) -> str:
    return "".join(f"{name}={value}\n" for name, value in values.items())


def env_file_from_example(values: dict[str, str]) -> str:
    """deploy/provisioner.env.example with ``values`` filled in (commented-out optional
    lines uncommented): every name given must be one the example has."""
    done: set[str] = set()
    lines = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        found = re.fullmatch(r"#?([A-Z_]+)=.*", line)
        if found and found.group(1) in values:
            name = found.group(1)
            line = f"{name}={values[name]}"
            done.add(name)
        lines.append(line)
    assert done == set(values), f"not in {ENV_EXAMPLE.name}: {set(values) - done}"
    return "\n".join(lines) + "\n"


@pytest.fixture
def cron_root() -> Iterator[Path]:
    """The daemon's folders, outside pytest's root-only basetemp (so that nobody can
    reach the installations in it), deleted at the end."""
    reason = _why_not_here()
    if reason is not None:
        missing(CRON, reason, fix="run the slow tests as root on Linux")
    root = Path(tempfile.mkdtemp(prefix="provisioner-cron-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def cron_program() -> str:
    """Debian's cron daemon: installed, or fetched once from its package."""
    return debian_tool(CRON)


@pytest.fixture
def service_user() -> tuple[str, int, int] | None:
    """The user the wrapper runs the provisioner as (None: the run stays root)."""
    return _run_as()


def mount_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:  # gone
        return None


def processes_in(namespace: str) -> list[int]:
    """The pids in mount namespace ``namespace``: the daemon, its jobs, their mailers."""
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    return [pid for pid in pids if mount_namespace(pid) == namespace]


async def poll(condition: Callable[[], bool], what: str, seconds: float) -> None:
    """Wait until ``condition()`` holds; fail naming ``what`` after ``seconds`` (a bound
    for a busy machine, not a time the test asserts)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"gave up after {seconds:.0f} s waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.mark.timeout(300)
async def test_debian_cron_runs_the_shipped_job(
    sandbox: Sandbox,
    cron_root: Path,
    cron_program: str,
    service_user: tuple[str, int, int] | None,
) -> None:
    """Debian's cron runs the shipped crontab line: the wrapper runs as the service user
    with the env file's key; exit 0 writes the outputs and metrics and mails nothing,
    exit 1 is mailed by cron to the crontab's MAILTO as the wrapper's report; a copy
    named provisioner.cron is ignored, as the crontab's comment warns."""
    program, user = cron_program, service_user
    for name in ("cron.d", "spool/cron/crontabs", "run", "sbin", "sbin-real", "mail"):
        (cron_root / name).mkdir(parents=True)
    (cron_root / "sendmail").write_text(SENDMAIL.format(mail=cron_root / "mail"))
    (cron_root / "sendmail").chmod(0o755)
    good = Install(cron_root / "good", sandbox.url, user)
    write_csv(good.manifest, campaigns(20, prefix="g"))
    bad = Install(cron_root / "bad", sandbox.url, user)
    write_csv(bad.manifest, [*campaigns(3, prefix="b"), ("", "s-empty")])
    # The mistake the crontab's comment warns of: the file copied under its own name.
    dotted = Install(cron_root / "dotted", sandbox.url, user)
    write_csv(dotted.manifest, campaigns(2, prefix="d"))
    # /etc/cron.d/provisioner as docs/operations.md installs it (root, 0644), and a second one.
    installed = (("provisioner", good), ("provisioner-bad", bad), (CRONTAB.name, dotted))
    for name, install in installed:
        (cron_root / "cron.d" / name).write_text(install.crontab())
        (cron_root / "cron.d" / name).chmod(0o644)

    with (cron_root / "cron.output").open("wb") as output:
        daemon = await asyncio.create_subprocess_exec(
            *("unshare", "--mount", "--propagation", "private", "bash", "-c", NAMESPACE),
            *("cron-namespace", str(cron_root), program),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=output,
            stderr=output,
        )
    try:

        def both_started() -> bool:
            if daemon.returncode is not None:
                said = (cron_root / "cron.output").read_text()
                pytest.fail(f"cron exited {daemon.returncode} before running the jobs: {said}")
            return good.log.exists() and bad.log.exists()

        # The wrapper creates its log as it starts the run: cron has run both jobs.
        await poll(both_started, "cron to start both jobs (at the next minute)", 90)
        namespace = mount_namespace(daemon.pid)
        assert namespace is not None
    finally:
        # Stopped before the next minute: each job runs once. The jobs and cron's mailers
        # are processes of their own and carry on.
        if daemon.returncode is None:
            daemon.send_signal(signal.SIGTERM)
        await asyncio.wait_for(daemon.wait(), timeout=30)
    await poll(lambda: not processes_in(namespace), "the jobs and their mail to finish", 60)
    # Cron forks every job of a minute at once: a dotted file's would have run by now.
    assert not dotted.log.exists(), "cron ran a /etc/cron.d file whose name has a dot"

    # Exit 0: every row created, the outputs and the metrics file, nothing to mail.
    _, _, _, summary = outputs(good.out)
    assert summary["exit_code"] == 0
    assert summary["counts"]["created"] == 20
    assert_invariant(good.out, 20)
    assert re.search(r"^provisioner_run_exit_code\{.*\} 0(\.0)?$", good.metrics.read_text(), re.M)
    assert '"event":"run_started"' in good.log_text()
    assert KEY not in good.log_text()
    if user is not None:  # the wrapper dropped to the service user for the run
        assert good.state.stat().st_uid == user[1]
        assert (good.out / "summary.json").stat().st_uid == user[1]
    # Exit 1: cron mailed the wrapper's report (its stderr) to the crontab's MAILTO.
    _, failures, _, summary = outputs(bad.out)
    assert summary["exit_code"] == 1
    assert [f["error"] for f in failures] == ["empty_field"]
    assert sandbox.ledger.total == 23
    mails = [p.read_text() for p in sorted((cron_root / "mail").iterdir())]
    assert len(mails) == 1, mails  # none for the run that exited 0
    argv, message = mails[0].split("\n", 1)
    mailto = re.search(r"^MAILTO=(.*)$", CRONTAB.read_text(), re.M)
    assert mailto is not None
    assert argv == f"ARGV -FCronDaemon -i -B8BITMIME -oem {mailto.group(1)}"
    headers, body = message.split("\n\n", 1)
    assert f"To: {mailto.group(1)}" in headers.splitlines()
    # Cron saw the wrapper's exit code: "(failed)" marks a job that did not exit 0.
    host = os.uname().nodename.split(".")[0]
    assert f"Subject: Cron <root@{host}> {WRAPPER} (failed)" in headers.splitlines()
    assert f"X-Cron-Env: <PROVISIONER_ENV_FILE={bad.env_file}>" in headers.splitlines()
    first, *closing = body.rstrip("\n").splitlines()
    assert first.startswith(
        f"run-provisioner: provisioner exited 1: some rows failed: read {bad.out}/failures.jsonl"
    )
    (event,) = [e for e in bad.log_events() if e["event"] == "run_summary"]
    assert closing == event["lines"]  # the run's own closing lines: counts, errors, next step
    assert KEY not in mails[0]
