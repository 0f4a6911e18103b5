"""The campaign check: rows for unknown or non-API campaigns fail before spending quota.

Each workspace's campaigns are listed once per run (``_braze/campaigns.py``), the first
time one of its rows is dispatched, and kept for the run. A row whose campaign the listing
does not have fails as ``unknown_campaign``; one that exists but is not an API campaign
as ``not_api_campaign``; neither is sent. When the listing cannot be had (the key lacks
``campaigns.list``, or it kept failing) one warning says so and that workspace's rows go
on unchecked, as before the check existed. ``--no-campaign-check`` turns it off.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from provisioner._braze.campaigns import Campaigns, Unchecked, list_campaigns
from provisioner._braze.client import BrazeClient
from provisioner._braze.retry import RetryBudget, RetryPolicy
from provisioner._braze.sender import Sender
from provisioner._core.logs import get_logger
from provisioner._core.models import Outcome, Row, RowError
from provisioner._pipeline.outcomes import failed_from_error

log = get_logger(__name__)

#: The failure codes of this check (stable: scripts match on them).
CAMPAIGN_ERRORS = ("unknown_campaign", "not_api_campaign")

_ADVICE = {
    "unknown_campaign": "campaign {cid} is not in this workspace's campaign list (Braze's "
    "GET /campaigns/list): check the id for a typo and that the row's workspace (API key) is "
    "the one the campaign belongs to; it was not sent, so no quota was spent",
    "not_api_campaign": "campaign {cid} exists but is not an API campaign, so Braze cannot "
    "create send ids for it: use the id of an API campaign (create one in the dashboard under "
    "Campaigns > API Campaign); it was not sent, so no quota was spent",
}


def refused(row: Row, send_id: str | None, code: str) -> Outcome:
    """The failed outcome of a row the check refuses (never sent, not retryable): the same
    outcome as any row error, so it is written as one."""
    return failed_from_error(
        RowError(
            line=row.line,
            error=code,
            message=_ADVICE[code].format(cid=row.campaign_id),
            field="campaign_id",
            campaign_id=row.campaign_id,
            send_id=send_id,
            columns=row.columns,
        )
    )


class CampaignCheck:
    """Per workspace, its listing (fetched once, shared by every caller) or None."""

    def __init__(
        self,
        enabled: bool,
        policy: RetryPolicy,
        budget: RetryBudget,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.enabled = enabled
        self._policy = policy
        self._budget = budget
        self._sleep = sleep
        self._tasks: dict[str, asyncio.Task[Campaigns | Unchecked]] = {}
        #: Workspace label -> why it went unchecked (for the summary and tests).
        self.unchecked: dict[str, Unchecked] = {}

    async def campaigns(self, label: str, client: Sender) -> Campaigns | None:
        """The workspace's campaigns, or None when it goes unchecked."""
        if not self.enabled or not isinstance(client, BrazeClient):
            return None  # off, or a test double standing in for Braze: nothing to list
        task = self._tasks.get(label)
        if task is None:
            task = asyncio.ensure_future(
                list_campaigns(client, policy=self._policy, budget=self._budget, sleep=self._sleep)
            )
            self._tasks[label] = task
            result = await task
            if isinstance(result, Unchecked):
                self.unchecked[label] = result
                log.warning(
                    "campaign_check_skipped", workspace=label, reason=result.reason,
                    http_status=result.http_status, message=result.message,
                )  # fmt: skip
            else:
                log.info(
                    "campaigns_listed", workspace=label, api=len(result.api),
                    other=len(result.other),
                )  # fmt: skip
        result = await task
        return result if isinstance(result, Campaigns) else None
