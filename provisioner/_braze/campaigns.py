"""Braze's ``GET /campaigns/list``: a workspace's campaigns, listed before quota is spent.

The listing uses Braze's general REST rate limit (250,000 requests an hour per workspace),
not the create endpoint's daily quota, so checking a manifest's campaigns beforehand is
nearly free while a row for a mistyped campaign may cost a unit of the scarcest thing the
tool handles. Pages of 100 are read one after another, at most ``LIST_RATE`` a second: a
workspace with 10,000 campaigns takes 100 requests, far inside the general limit even
with other clients sharing it.

The outcome is a ``Campaigns`` (what exists and which are API campaigns) or an
``Unchecked`` saying why the run goes on without the check: the key lacks the
``campaigns.list`` permission (401/403/404, not retried), or the listing kept failing
(5xx, timeouts, connection errors: retried within the run's retry policy).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from provisioner._braze.client import ENDPOINT, BrazeClient, Reply, ReplyKind
from provisioner._braze.pacing import Pacer
from provisioner._braze.retry import RetryBudget, RetryPolicy, Transient
from provisioner.errors import ConnectFailed

__all__ = [
    "LIST_PATH",
    "LIST_RATE",
    "PERMISSION",
    "Campaigns",
    "Unchecked",
    "list_campaigns",
]

LIST_PATH = "/campaigns/list"
#: The permission Braze documents for the listing.
PERMISSION = "campaigns.list"
#: Pages per second at most: ~7% of the general limit's 69.4 requests a second.
LIST_RATE = 5.0
#: A listing longer than this many pages is not believed (a server repeating a page).
MAX_PAGES = 100_000


@dataclass(frozen=True, slots=True)
class Campaigns:
    """A workspace's campaigns: ``api`` ids can get send ids; ``other`` exist but cannot."""

    api: frozenset[str]
    other: frozenset[str]

    def verdict(self, campaign_id: str) -> str | None:
        """``unknown_campaign``, ``not_api_campaign``, or None for an API campaign."""
        if campaign_id in self.api:
            return None
        return "not_api_campaign" if campaign_id in self.other else "unknown_campaign"


@dataclass(frozen=True, slots=True)
class Unchecked:
    """Why a workspace's campaigns are not checked: ``no_permission`` or ``failed``."""

    reason: str
    message: str
    http_status: int | None = None


class _Refused(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _failure(status: int, message: str) -> Transient:
    reply = Reply(ReplyKind.SERVER_ERROR, status, None, message, None, None, 0.0)
    return Transient(reply=reply)


async def _page(session: aiohttp.ClientSession, url: str, page: int) -> list[Any]:
    """One page's campaigns; Transient for what a retry may fix, _Refused for the key."""
    params = {"page": str(page), "include_archived": "false", "sort_direction": "asc"}
    try:
        async with session.get(url, params=params, allow_redirects=False) as resp:
            raw = await resp.read()  # pages of 100 with names and tags: tens of kB
            status = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        # A GET creates nothing: every transport failure is safe to retry.
        raise Transient(error=ConnectFailed(f"{url}: {type(exc).__name__}")) from exc
    if status == 429 or status >= 500:
        raise _failure(status, f"{url} answered {status}")
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    campaigns = body.get("campaigns") if isinstance(body, dict) else None
    if 400 <= status < 500 or 300 <= status < 400:
        raise _Refused(status)  # the key, the URL or the request: a retry cannot help
    if status != 200 or not isinstance(campaigns, list):
        raise _failure(status, f"{url} answered {status} without a campaigns list")
    return campaigns


async def list_campaigns(
    client: BrazeClient,
    *,
    policy: RetryPolicy,
    budget: RetryBudget,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Campaigns | Unchecked:
    """Every campaign of the client's workspace, page after page, or why not."""
    url = client.url.removesuffix(ENDPOINT) + LIST_PATH
    api: set[str] = set()
    other: set[str] = set()
    pacer = Pacer(LIST_RATE)
    try:
        for page in range(MAX_PAGES):
            await pacer.wait()
            first: Transient | None = None
            try:
                entries = await _page(client.session, url, page)
            except Transient as exc:
                first = exc
            if first is not None:
                entries = await _retried(client.session, url, page, first, policy, budget, sleep)
            for entry in entries:
                if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                    (api if entry.get("is_api_campaign") is True else other).add(entry["id"])
            if len(entries) < 100:
                break
    except _Refused as exc:
        if exc.status not in (401, 403):
            return Unchecked(
                "failed",
                f"{url} answered {exc.status}, so campaign ids are not checked before sending "
                "(is base_url the instance's REST endpoint?); rows for unknown campaigns will "
                "fail as invalid_campaign_id and may spend quota",
                exc.status,
            )
        return Unchecked(
            "no_permission",
            f"{url} answered {exc.status}: the API key lacks the {PERMISSION} permission, so "
            f"campaign ids are not checked before sending; give the key {PERMISSION} to have "
            "unknown and non-API campaigns refused without spending quota",
            exc.status,
        )
    except Transient as exc:
        status = exc.reply.status if exc.reply is not None else None
        return Unchecked(
            "failed",
            f"listing the campaigns failed ({exc}) after the retries the policy allows, so "
            "campaign ids are not checked before sending; rows for unknown campaigns will "
            "fail as invalid_campaign_id and may spend quota",
            status,
        )
    return Campaigns(frozenset(api), frozenset(other - api))


async def _retried(
    session: aiohttp.ClientSession,
    url: str,
    page: int,
    first: Transient,
    policy: RetryPolicy,
    budget: RetryBudget,
    sleep: Callable[[float], Awaitable[None]],
) -> list[Any]:
    pending: Transient | None = first
    async for attempt in policy.retrying(budget, sleep=sleep):
        with attempt:
            if pending is not None:
                exc, pending = pending, None
                raise exc
            return await _page(session, url, page)
    raise AssertionError("unreachable: tenacity re-raises the last failure")
