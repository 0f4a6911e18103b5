"""The named vocabulary: exit codes and deferral reasons keep the contract's bare values."""

from __future__ import annotations

import re
from pathlib import Path

from provisioner import errors
from provisioner._core.vocab import DeferReason, ExitCode
from provisioner._outputs.report import _NEXT_STEP

README = Path(__file__).resolve().parents[2] / "README.md"


def test_exit_codes_are_the_readme_table() -> None:
    """Every code in README's "Exit codes" table is an ExitCode member, and nothing more."""
    table = README.read_text(encoding="utf-8").split("### Exit codes", 1)[1].split("\n## ", 1)[0]
    documented = {int(n) for cell in re.findall(r"^\| ([\d /]+) \|", table, re.M)
                  for n in cell.split("/")}  # fmt: skip
    assert documented == {int(code) for code in ExitCode}


def test_errors_exit_with_named_codes() -> None:
    """Each error's exit_code is an ExitCode (errors.py states them as ints: bottom layer)."""
    assert errors.ProvisionerError.exit_code == ExitCode.USAGE
    assert errors.StateLockedError.exit_code == ExitCode.LOCKED
    assert errors.TransportError.exit_code == ExitCode.ROWS_FAILED
    for name in dir(errors):
        value = getattr(errors, name)
        if isinstance(value, type) and issubclass(value, errors.ProvisionerError):
            assert value.exit_code in set(ExitCode), name


def test_internal_signals_sit_in_the_errors_tree() -> None:
    """Deferred, Transient and LineTooLong subclass the documented InternalSignal base."""
    for exc in (errors.Deferred, errors.Transient, errors.LineTooLong):
        assert issubclass(exc, errors.InternalSignal)
        assert issubclass(exc, errors.ProvisionerError)
        assert exc.__name__ in (errors.__doc__ or "")


def test_every_deferral_reason_has_a_next_step_and_a_bare_value() -> None:
    """The summary explains every reason, and each reason writes as its plain string."""
    assert set(_NEXT_STEP) == set(DeferReason)
    assert f"{DeferReason.QUOTA}" == "quota"
    assert str(DeferReason.OUTAGE) == "outage"


def test_resumable_codes_are_deferred_and_the_signals() -> None:
    """A later run picks up after 3, 130 and 143 (RunResult.needs_rerun reads this)."""
    assert {c for c in ExitCode if c.resumable} == {3, 130, 143}
