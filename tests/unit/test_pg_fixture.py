"""The suite's PostgreSQL fixture on a machine without PostgreSQL: it fails, so a green
`make test` always ran the PostgreSQL tests, unless skipping is asked for."""

from __future__ import annotations

import pytest

from tests.conftest import ALLOW_NO_POSTGRES, no_postgres


def test_missing_postgresql_fails_the_tests() -> None:
    """Without the binaries and without the opt-out, a PostgreSQL test fails."""
    with pytest.raises(pytest.fail.Exception, match=ALLOW_NO_POSTGRES):
        no_postgres({})
    with pytest.raises(pytest.fail.Exception):
        no_postgres({ALLOW_NO_POSTGRES: "0"})


def test_the_opt_out_makes_them_skip() -> None:
    """PROVISIONER_TESTS_ALLOW_NO_POSTGRES=1 turns the failure into a skip."""
    with pytest.raises(pytest.skip.Exception, match="no PostgreSQL binaries"):
        no_postgres({ALLOW_NO_POSTGRES: "1"})
