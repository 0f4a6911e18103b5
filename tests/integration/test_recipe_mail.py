"""What the cron wrapper reports, per exit code: the real run-provisioner.sh against the sandbox.

A report is one line saying what the exit code means, then the run's own closing lines
taken from the log (counts, the most common errors, the run id, the next step). It goes
to stderr, which cron mails to MAILTO, or with PROVISIONER_MAILTO set to a `sendmail` on
PATH: here a fake one that records its arguments and the message it was given.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from provisioner.sandbox.server import Sandbox
from tests.conftest import SandboxFactory

from .helpers import campaigns, outputs, write_csv
from .test_recipes import Cron


class Sendmail:
    """A fake `sendmail` first on PATH: each call appends its argv and its stdin to a file."""

    def __init__(self, folder: Path, *, fails: bool = False) -> None:
        folder.mkdir()
        self.calls = folder / "calls"
        self.path = folder
        script = folder / "sendmail"
        script.write_text(
            "#!/bin/sh\n"
            f'{{ printf "ARGV %s\\n" "$*"; cat; printf "\\n.\\n"; }} >>"{self.calls}"\n'
            f"exit {1 if fails else 0}\n"
        )
        script.chmod(0o755)

    def env(self, cron: Cron, to: str = "oncall@example.com") -> dict[str, str]:
        """Overrides for the wrapper's environment: this sendmail first, PROVISIONER_MAILTO."""
        return {"PATH": f"{self.path}:{cron.env()['PATH']}", "PROVISIONER_MAILTO": to}

    def messages(self) -> list[str]:
        """The messages it was given, each with its ARGV line first."""
        if not self.calls.exists():
            return []
        return [m.strip("\n") for m in self.calls.read_text().split("\n.\n") if m.strip()]


@pytest.fixture
def sendmail(tmp_path: Path) -> Sendmail:
    return Sendmail(tmp_path / "bin")


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections (bound, never listening), held for the test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def stand_in(tmp_path: Path, stderr: str, code: int) -> dict[str, str]:
    """A PROVISIONER_BIN override: a command that writes ``stderr`` and exits ``code``."""
    shim = tmp_path / "provisioner"
    shim.write_text(f"#!/bin/sh\ncat >&2 <<'EOF'\n{stderr}\nEOF\nexit {code}\n")
    shim.chmod(0o755)
    return {"PROVISIONER_BIN": str(shim)}


def summary_event(*lines: str, code: int = 1) -> str:
    """A run_summary log line as the provisioner writes it (orjson)."""
    event = {"run_id": "r1", "exit_code": code, "lines": list(lines), "event": "run_summary"}
    return orjson.dumps(event).decode()


def summary_lines(cron: Cron) -> list[str]:
    """The run's closing lines as the run logged them (its run_summary event)."""
    (event,) = [e for e in cron.log_events() if e["event"] == "run_summary"]
    return list(event["lines"])


async def test_exit_1_mail_holds_the_runs_closing_lines(
    sandbox: Sandbox, tmp_path: Path, sendmail: Sendmail
) -> None:
    """Exit 1: one mail by sendmail -t, subject with host and code, body = what + closing lines."""
    cron = Cron(tmp_path, sandbox.url)
    write_csv(cron.manifest, [*campaigns(3), ("", "s-empty")])
    code, stderr = await cron.run(**sendmail.env(cron))
    assert code == 1
    assert stderr == ""  # reported once, by mail: cron has nothing to mail twice
    (message,) = sendmail.messages()
    argv, rest = message.split("\n", 1)
    assert argv == "ARGV -t -i"
    headers, body = rest.split("\n\n", 1)
    assert "To: oncall@example.com" in headers.splitlines()
    assert "Auto-Submitted: auto-generated" in headers.splitlines()
    (subject,) = [h for h in headers.splitlines() if h.startswith("Subject: ")]
    assert "exited 1: rows failed" in subject
    first, *closing = body.splitlines()
    assert first.startswith("run-provisioner: provisioner exited 1: some rows failed")
    assert str(cron.out / "failures.jsonl") in first
    # The tool's own closing lines, as it logged them: counts, top error, run id, next step.
    assert closing == summary_lines(cron)
    run_id = outputs(cron.out)[3]["run_id"]
    assert f"run {run_id} finished with exit code 1" in closing[0]
    assert "3 created, 1 failed" in closing[0]
    assert any("most common: empty_field (1)" in line for line in closing)


async def test_exit_4_report_names_the_unreachable_host(
    tmp_path: Path, closed_port: int, sendmail: Sendmail
) -> None:
    """Exit 4 (base URL never answered): the mail says so and quotes the 'stopped' line."""
    cron = Cron(tmp_path, f"http://127.0.0.1:{closed_port}")
    write_csv(cron.manifest, campaigns(2))
    code, stderr = await cron.run(PROVISIONER_RETRY_ATTEMPTS="1", **sendmail.env(cron))
    assert code == 4, stderr
    (message,) = sendmail.messages()
    assert "exited 4: configuration error, a workspace stopped" in message
    body = message.split("\n\n", 1)[1]
    assert "a workspace cannot be used as configured" in body.splitlines()[0]
    assert body.splitlines()[1:] == summary_lines(cron)
    stopped = [line for line in body.splitlines() if "stopped:" in line]
    assert stopped
    assert f"127.0.0.1:{closed_port}" in stopped[0]
    assert "not an outage" in stopped[0]


async def test_clean_run_sends_no_mail(
    sandbox: Sandbox, tmp_path: Path, sendmail: Sendmail
) -> None:
    """Exit 0: sendmail is never called and nothing is on stderr."""
    cron = Cron(tmp_path, sandbox.url)
    write_csv(cron.manifest, campaigns(3))
    code, stderr = await cron.run(**sendmail.env(cron))
    assert (code, stderr) == (0, "")
    assert sendmail.messages() == []


async def test_exit_3_is_reported_unless_made_quiet(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """Exit 3 reports when the window reopens; PROVISIONER_QUIET_CODES with 3 silences it."""
    sandbox = await sandbox_factory(daily_quota=2)
    cron = Cron(tmp_path, sandbox.url)
    write_csv(cron.manifest, campaigns(4))
    code, stderr = await cron.run()
    assert code == 3, stderr
    first, *closing = stderr.splitlines()
    assert "exited 3: rows deferred" in first
    assert "nothing to do" in first
    assert closing == summary_lines(cron)
    assert any("next window opens" in line for line in closing)
    quiet = {"PROVISIONER_QUIET_CODES": "0 3 75 130 143"}
    code, stderr = await cron.run(**quiet, **stand_in(tmp_path, summary_event(code=3), 3))
    assert (code, stderr) == (3, "")


async def test_exit_2_report_quotes_the_error(tmp_path: Path) -> None:
    """Exit 2 before anything is sent: the report quotes the run's one-line error."""
    cron = Cron(tmp_path, "http://127.0.0.1:9")
    code, stderr = await cron.run(PROVISIONER_MANIFEST=str(tmp_path / "missing.csv"))
    assert code == 2
    first, *rest = stderr.splitlines()
    assert "exited 2" in first
    assert "nothing was sent" in first
    (error,) = [e["message"] for e in cron.log_events() if e["event"] == "error"]
    assert rest == [error]
    assert "missing.csv" in error


async def test_report_decodes_any_json_string(tmp_path: Path) -> None:
    """Closing lines with quotes, backslashes, brackets, tabs, accents come back exactly."""
    lines = [
        'a "quoted" word, a back\\slash \\" and \\\\',
        'brackets ] [ "," and a comma, then ],"',
        "",
        "a tab\there, an accent: Zoë, a euro: €, a \\u0041 that stays",
    ]
    cron = Cron(tmp_path, "http://127.0.0.1:9")
    code, stderr = await cron.run(**stand_in(tmp_path, summary_event(*lines), 1))
    assert code == 1
    assert stderr.split("\n")[1:] == [*lines, ""]  # the last: a final newline


async def test_unexpected_exit_quotes_the_logs_last_lines(tmp_path: Path) -> None:
    """A crash with no summary (exit 137, a traceback): the report quotes the log's tail."""
    shim = tmp_path / "provisioner"
    shim.write_text(
        '#!/bin/sh\nfor i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo "line $i" >&2; done\n'
        "echo 'MemoryError' >&2\nexit 137\n"
    )
    shim.chmod(0o755)
    cron = Cron(tmp_path, "http://127.0.0.1:9")
    code, stderr = await cron.run(PROVISIONER_BIN=str(shim))
    assert code == 137
    first, *rest = stderr.splitlines()
    assert "unexpected exit code" in first
    assert rest == [f"line {i}" for i in range(4, 13)] + ["MemoryError"]


async def test_failed_sendmail_falls_back_to_stderr(tmp_path: Path) -> None:
    """When sendmail fails the report still reaches stderr (cron, journald), after a note."""
    broken = Sendmail(tmp_path / "bin", fails=True)
    cron = Cron(tmp_path, "http://127.0.0.1:9")
    ran = stand_in(tmp_path, summary_event("run r1 finished", "  1 rows failed"), 1)
    code, stderr = await cron.run(**broken.env(cron), **ran)
    assert code == 1
    note, first, *closing = stderr.splitlines()
    assert note == "run-provisioner: sendmail failed; the report for oncall@example.com follows"
    assert first.startswith("run-provisioner: provisioner exited 1")
    assert closing == ["run r1 finished", "  1 rows failed"]
    assert len(broken.messages()) == 1


async def test_wrapper_error_is_mailed_too(tmp_path: Path, sendmail: Sendmail) -> None:
    """The wrapper's own refusal (a readable env file, exit 2) is mailed like a run's."""
    cron = Cron(tmp_path, "http://127.0.0.1:9")
    cron.env_file.chmod(0o644)
    code, stderr = await cron.run(**sendmail.env(cron))
    assert (code, stderr) == (2, "")
    (message,) = sendmail.messages()
    assert "exited 2: nothing ran" in message
    assert "chmod 600" in message
