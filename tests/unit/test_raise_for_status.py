"""``RunResult.raise_for_status`` fails an orchestrator's task for each exit code that means
work is left for a person, and lets deferred rows pass unless told not to (issue 13 item 7)."""

from __future__ import annotations

import pytest

from provisioner.api import RunResult
from provisioner.errors import RunFailed


def result(code: int) -> RunResult:
    """A finished run's result with ``code`` as its exit code."""
    return RunResult(run_id="run-1", exit_code=code, summary={"counts": {"created": 1}})


@pytest.mark.parametrize("code", [1, 2, 4])
@pytest.mark.parametrize("allow_deferred", [True, False])
def test_failed_usage_and_unreachable_runs_raise(code: int, allow_deferred: bool) -> None:
    """Exit 1, 2 and 4 raise RunFailed carrying the result and its exit code, whether or
    not deferred rows are allowed."""
    r = result(code)
    with pytest.raises(RunFailed, match=f"exit code {code}") as raised:
        r.raise_for_status(allow_deferred=allow_deferred)
    assert raised.value.exit_code == code
    assert raised.value.result is r


def test_deferred_passes_by_default_and_raises_when_not_allowed() -> None:
    """Exit 3 (rows wait for the next window) returns the result by default and with
    allow_deferred=True; with allow_deferred=False it raises RunFailed."""
    r = result(3)
    assert r.raise_for_status() is r
    assert r.raise_for_status(allow_deferred=True) is r
    with pytest.raises(RunFailed, match="exit code 3") as raised:
        r.raise_for_status(allow_deferred=False)
    assert raised.value.exit_code == 3


@pytest.mark.parametrize("allow_deferred", [True, False])
def test_a_clean_run_passes(allow_deferred: bool) -> None:
    """Exit 0 returns the result (for chaining) either way."""
    r = result(0)
    assert r.raise_for_status(allow_deferred=allow_deferred) is r
