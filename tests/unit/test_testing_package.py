"""provisioner.testing: public, sorted, and never imported by the tool itself."""

from __future__ import annotations

import ast
from pathlib import Path

import provisioner.testing
from provisioner._braze.client import BrazeClient
from provisioner._braze.sender import Sender
from provisioner.testing import ScriptedSender

ROOT = Path(provisioner.testing.__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_no_module_of_the_tool_imports_provisioner_testing() -> None:
    """The test doubles stay out of the tool: no module outside testing/ imports them."""
    offenders = [
        str(path.relative_to(ROOT))
        for path in sorted(ROOT.rglob("*.py"))
        if "testing" not in path.relative_to(ROOT).parts
        and any(n == "provisioner.testing" or n.startswith("provisioner.testing.")
                for n in _imports(path))
    ]  # fmt: skip
    assert offenders == []


def test_all_is_sorted_and_complete() -> None:
    """``__all__`` is sorted and every name in it exists."""
    names = provisioner.testing.__all__
    assert names == sorted(names)
    assert all(hasattr(provisioner.testing, n) for n in names)


def test_the_real_client_and_the_fake_both_satisfy_the_sender_seam() -> None:
    """BrazeClient and ScriptedSender are both Senders (checked by mypy here too)."""
    fake: Sender = ScriptedSender()
    real: type[Sender] = BrazeClient
    assert fake.url.endswith("/sends/id/create")
    assert callable(real.create)
