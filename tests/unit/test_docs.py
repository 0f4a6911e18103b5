"""The README's option tables and the parser agree, and the tests it names exist, so the
documentation cannot drift."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from provisioner._cli.args import build_parser

README = Path(__file__).resolve().parents[2] / "README.md"


def documented_options(command: str) -> set[str]:
    """The --options in the first column of the table under `### `provisioner COMMAND``."""
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"^### `provisioner {command}\b.*?$(.*?)(?=^### |^## )", text, re.S | re.M)
    assert match, f"README has no section for provisioner {command}"
    options: set[str] = set()
    for line in match.group(1).splitlines():
        if line.startswith("| `--"):
            options.add(line.split("`")[1].split()[0])
    return options


def parser_options(command: str) -> set[str]:
    """The long options the parser accepts for a subcommand (help and version excluded)."""
    parser: argparse.ArgumentParser = build_parser()
    for word in command.split():  # "state copy": a command of a command
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    return {
        opt
        for action in parser._actions
        for opt in action.option_strings
        if opt.startswith("--") and opt != "--help"
    }


@pytest.mark.parametrize(
    "command", ["run", "export", "status", "validate", "prune", "sandbox", "state copy"]
)
def test_readme_documents_exactly_the_parsers_options(command: str) -> None:
    """Every option the parser has is in the README table, and nothing more."""
    assert documented_options(command) == parser_options(command)


def test_tests_named_by_the_guarantees_exist() -> None:
    """Every `test_file.py` and `test_file.py::test_name` the README names is in tests/."""
    text = README.read_text(encoding="utf-8")
    guarantees = text[text.index("## Guarantees") : text.index("## Usage")]
    tests = README.parent / "tests"
    named = re.findall(r"`(test_\w+\.py)(?:::(test_\w+))?", guarantees)
    assert len(named) >= 15
    for filename, function in named:
        found = list(tests.rglob(filename))
        assert found, f"README names {filename}, which is not in tests/"
        if function:
            source = found[0].read_text(encoding="utf-8")
            assert re.search(rf"def {function}\(", source), f"{filename}::{function} is gone"
