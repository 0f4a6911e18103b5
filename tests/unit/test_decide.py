"""The one decision per row (``_pipeline/decide.py``), as a table."""

from __future__ import annotations

import pytest

from provisioner._pipeline.decide import IN_DOUBT, SEND, SKIP, Decision, decide
from provisioner._state.schema import Prior

_PRIORS: dict[str, Prior | None] = {
    "none": None,
    "created": Prior("created", "r0", 1.0, "s"),
    "open_intent": Prior("in_flight", "r0", 1.0, None),
    "in_doubt": Prior("in_doubt", "r0", 1.0, None),
}

# (has send_id, prior, flag) -> decision. --derive-send-ids is a send_id (has_send_id).
_TABLE = [
    (True, "none", "", SEND),
    (True, "created", "", SKIP),
    (True, "open_intent", "", SEND),  # the same combination: safe to resend
    (True, "in_doubt", "", SEND),
    (False, "none", "", SEND),
    (False, "created", "", SKIP),
    (False, "open_intent", "", IN_DOUBT),
    (False, "in_doubt", "", IN_DOUBT),
    (True, "created", "force", SEND),
    (False, "created", "force", SEND),
    (False, "open_intent", "force", SEND),
    (False, "in_doubt", "force", SEND),
    (True, "created", "retry", SKIP),
    (False, "created", "retry", SKIP),
    (False, "open_intent", "retry", SEND),
    (False, "in_doubt", "retry", SEND),
]


@pytest.mark.parametrize(("has_send_id", "prior", "flag", "expected"), _TABLE)
def test_decision_table(has_send_id: bool, prior: str, flag: str, expected: Decision) -> None:
    """Skip what was created, doubt only a send_id-less row with an open intent or a doubt,
    send the rest; --force sends all, --retry-in-doubt sends the doubted."""
    got = decide(has_send_id, _PRIORS[prior], force=flag == "force", retry_in_doubt=flag == "retry")
    assert got is expected
