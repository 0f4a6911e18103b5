"""The one decision per row: skip it, report it in doubt, or send it.

``run`` (``Run.dispatch``) and ``validate`` (the forecast) both call :func:`decide`, so
that what ``validate`` counts is what ``run`` then does. The inputs are the row's identity
(does the request carry a send_id: the row's own or a derived one), what the state store
knows of that identity from earlier runs (nothing, created, an open intent, in doubt) and
the run's flags (``--force``, ``--retry-in-doubt``; ``--derive-send-ids`` acts through the
identity: a derived send_id is a send_id).

A row with a send_id and an open intent or a doubt from an earlier run is *sent*: it is
the same combination (``(campaign_id, send_id)``), so a repeat cannot create a second id
(README, guarantee 2: "a row with a send_id whose answer was lost is sent again"). Only a
row *without* a send_id is in doubt, since resending it could make Braze create another.

Deferral is not decided here: it depends on the run's state at the moment a row would be
queued (a stopped workspace, a spent quota, a signal), which no forecast can know. A row
decided ``SEND`` is deferred by the run when its workspace is not sending.
"""

from __future__ import annotations

from enum import Enum

from provisioner._state.schema import Prior


class Decision(Enum):
    """What happens to a valid, non-repeated row."""

    SEND = "send"
    SKIP = "skip"  # an earlier run created it
    IN_DOUBT = "in_doubt"  # an earlier request may have created it, and no send_id is known


SEND, SKIP, IN_DOUBT = Decision.SEND, Decision.SKIP, Decision.IN_DOUBT


def decide(
    has_send_id: bool, prior: Prior | None, *, force: bool, retry_in_doubt: bool
) -> Decision:
    """The row's fate given its identity, the store's ``prior`` and the run's flags.

    Pure and cheap (it runs for every row of a skip run of a million rows).
    """
    if prior is None or force:
        return SEND
    if prior.kind == "created":
        return SKIP
    # An open intent ("in_flight": an earlier run died mid-request) or a recorded doubt.
    if has_send_id or retry_in_doubt:
        return SEND
    return IN_DOUBT
