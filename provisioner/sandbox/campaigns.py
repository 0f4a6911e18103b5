"""The sandbox's campaigns: ``--campaigns FILE`` and Braze's ``GET /campaigns/list``.

Without a campaign file the sandbox accepts every campaign id (as it always did). With
one, ``/sends/id/create`` answers 400 for an id it does not list or that is not an API
campaign, and ``GET /campaigns/list`` answers as Braze documents it (export page
"Export campaigns list"): pages of 100, oldest first (``sort_direction=desc`` reverses),
``{"message": "success", "campaigns": [{id, last_edited, name, is_api_campaign, tags}]}``.
A key named in ``keys_without_list`` lacks the ``campaigns.list`` permission and gets 403,
which is what Braze's error table gives for a key without sufficient permissions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from aiohttp import web

from provisioner.errors import UsageError
from provisioner.sandbox.faults import json_response

__all__ = [
    "PAGE_SIZE",
    "CampaignBook",
    "SandboxCampaign",
    "add_campaign_routes",
    "load_campaigns",
    "parse_campaigns",
]

#: Braze returns campaigns in groups of 100.
PAGE_SIZE = 100

_NOT_API = "not_api"


@dataclass(frozen=True, slots=True)
class SandboxCampaign:
    """One campaign the sandbox knows; ``is_api`` False for a non-API campaign."""

    id: str
    is_api: bool = True


def parse_campaigns(lines: Iterable[str], *, source: str) -> tuple[SandboxCampaign, ...]:
    """Campaigns from ``ID`` / ``ID,not_api`` lines; blank lines and ``#`` comments skipped.

    Raises ``UsageError`` naming ``source`` and the line of a bad or repeated entry.
    """
    found: dict[str, SandboxCampaign] = {}
    for number, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        campaign_id, _, flag = (part.strip() for part in text.partition(","))
        if not campaign_id or any(c.isspace() for c in campaign_id):
            raise UsageError(
                f"campaign file {source}: line {number}: the campaign id is empty or contains "
                "whitespace; write one id per line, optionally followed by ',not_api'"
            )
        if flag not in ("", _NOT_API):
            raise UsageError(
                f"campaign file {source}: line {number}: unknown marker {flag!r} after "
                f"{campaign_id!r}; the only marker is 'not_api'"
            )
        if campaign_id in found:
            raise UsageError(
                f"campaign file {source}: line {number}: campaign {campaign_id!r} is listed twice"
            )
        found[campaign_id] = SandboxCampaign(campaign_id, is_api=flag != _NOT_API)
    return tuple(found.values())


def load_campaigns(path: str) -> tuple[SandboxCampaign, ...]:
    """The campaigns of ``path`` (see ``parse_campaigns``); UsageError if unreadable."""
    try:
        with open(path, encoding="utf-8") as handle:
            return parse_campaigns(handle, source=path)
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise UsageError(
            f"--campaigns {path} cannot be read: {reason}; give a UTF-8 text file"
        ) from None


class CampaignBook:
    """The campaigns of one sandbox (every workspace sees the same list)."""

    def __init__(self, campaigns: Iterable[SandboxCampaign], *, created_at: float) -> None:
        self._campaigns = tuple(campaigns)
        self._by_id = {c.id: c for c in self._campaigns}
        stamp = datetime.fromtimestamp(created_at, UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")
        self._last_edited = stamp

    def __len__(self) -> int:
        return len(self._campaigns)

    def refusal(self, campaign_id: str) -> str | None:
        """Why ``/sends/id/create`` refuses ``campaign_id`` (400), or None to go on."""
        campaign = self._by_id.get(campaign_id)
        if campaign is None:
            return "Invalid campaign_id: no campaign found"
        if not campaign.is_api:
            return "Invalid campaign_id: the campaign is not an API campaign"
        return None

    def page(self, number: int, *, newest_first: bool) -> list[dict[str, object]]:
        """Page ``number`` (from 0) of the listing: up to 100 campaigns."""
        ordered = self._campaigns[::-1] if newest_first else self._campaigns
        chunk = ordered[number * PAGE_SIZE : (number + 1) * PAGE_SIZE]
        return [
            {
                "id": c.id,
                "last_edited": self._last_edited,
                "name": f"Sandbox campaign {c.id}",
                "is_api_campaign": c.is_api,
                "tags": [],
            }
            for c in chunk
        ]


def _bad_request(message: str) -> web.Response:
    return json_response(400, {"message": message, "errors": [message]}, None)


def add_campaign_routes(
    app: web.Application,
    book: CampaignBook | None,
    authenticate: Callable[[str | None], str | None],
    answered: Callable[[str], None],
) -> None:
    """``GET /campaigns/list``. ``authenticate`` maps the Authorization header to None
    (allowed), ``"403"`` (a known key without ``campaigns.list``), ``"503"`` (an outage)
    or a 401 message;
    ``answered`` counts the answer in the ledger under ``campaigns_list``."""

    async def list_campaigns(request: web.Request) -> web.Response:
        verdict = authenticate(request.headers.get("Authorization"))
        if verdict == "503":
            answered("503")
            return json_response(503, {"message": "Service Unavailable"}, None)
        if verdict == "403":
            answered("403")
            message = "Forbidden: this API key lacks the campaigns.list permission"
            return json_response(403, {"message": message}, None)
        if verdict is not None:
            answered("401")
            return json_response(401, {"message": verdict}, None)
        raw_page = request.query.get("page", "0")
        if not raw_page.isdigit():
            answered("400")
            return _bad_request(f"page must be an integer >= 0, got {raw_page!r}")
        direction = request.query.get("sort_direction", "asc")
        if direction not in ("asc", "desc"):
            answered("400")
            return _bad_request(f"sort_direction must be 'asc' or 'desc', got {direction!r}")
        # Every sandbox campaign is unarchived and was last edited at the start, so
        # include_archived and last_edit.time[gt] change nothing here.
        if book is None:
            # Without --campaigns every id is accepted: an empty list would say "none
            # exist", so the listing is simply not there, as on a server without it.
            answered("404")
            message = "Not found: the sandbox was started without --campaigns"
            return json_response(404, {"message": message}, None)
        campaigns = book.page(int(raw_page), newest_first=direction == "desc")
        answered("200")
        return json_response(200, {"message": "success", "campaigns": campaigns}, None)

    app.router.add_get("/campaigns/list", list_campaigns)
