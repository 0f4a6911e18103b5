"""The sandbox's campaigns over loopback: --campaigns, GET /campaigns/list, 400s and quota."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from provisioner.errors import UsageError
from provisioner.sandbox.campaigns import SandboxCampaign, load_campaigns, parse_campaigns
from provisioner.sandbox.server import Sandbox, SandboxConfig
from tests.conftest import SandboxFactory

KEY = "sandbox-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


async def _create(sb: Sandbox, campaign_id: str) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{sb.url}/sends/id/create", json={"campaign_id": campaign_id}, headers=AUTH
        ) as resp,
    ):
        return resp.status, await resp.json()


async def _list(
    sb: Sandbox, query: str = "", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{sb.url}/campaigns/list{query}", headers=headers or AUTH) as resp,
    ):
        return resp.status, await resp.json()


def _book(n: int, not_api: tuple[str, ...] = ()) -> tuple[SandboxCampaign, ...]:
    api = tuple(SandboxCampaign(f"c-{i:04d}") for i in range(n))
    return api + tuple(SandboxCampaign(c, is_api=False) for c in not_api)


def test_campaign_file_lines() -> None:
    """A campaign file has one id a line, ',not_api' marks a non-API one, '#' comments."""
    parsed = parse_campaigns(["# header", "c-1", "", " c-2 , not_api "], source="f")
    assert parsed == (SandboxCampaign("c-1"), SandboxCampaign("c-2", is_api=False))


@pytest.mark.parametrize(
    ("line", "fragment"),
    [("c-1,api", "unknown marker 'api'"), ("a b", "whitespace"), ("c-1\nc-1", "listed twice")],
)
def test_bad_campaign_file_names_file_and_line(tmp_path: Path, line: str, fragment: str) -> None:
    """A bad campaign file is refused naming the file, the line and what is wrong."""
    path = tmp_path / "campaigns.txt"
    path.write_text(line + "\n")
    with pytest.raises(UsageError, match=fragment) as info:
        load_campaigns(str(path))
    assert str(path) in str(info.value)
    assert "line " in str(info.value)


def test_invalid_counts_needs_campaigns() -> None:
    """--invalid-counts without --campaigns is refused: no id would be invalid."""
    with pytest.raises(UsageError, match="--invalid-counts needs --campaigns"):
        SandboxConfig(invalid_counts=True)


async def test_without_campaigns_every_id_accepted_and_no_listing(
    sandbox_factory: SandboxFactory,
) -> None:
    """Without --campaigns any id is created as before and /campaigns/list is 404."""
    sb = await sandbox_factory()
    assert (await _create(sb, "anything"))[0] == 201
    assert (await _list(sb))[0] == 404
    assert sb.ledger.campaigns_list == {"404": 1}


async def test_unknown_and_non_api_campaigns_get_400_without_quota(
    sandbox_factory: SandboxFactory,
) -> None:
    """With --campaigns, unknown and non-API ids get 400, spend no quota, show in the ledger."""
    sb = await sandbox_factory(campaigns=_book(1, ("c-old",)), daily_quota=5)
    assert (await _create(sb, "c-0000"))[0] == 201
    status, body = await _create(sb, "c-typo")
    assert status == 400
    assert "no campaign found" in body["message"]
    status, body = await _create(sb, "c-old")
    assert status == 400
    assert "not an API campaign" in body["message"]
    (window,) = sb.ledger.window_figures()
    assert (window.ours, window.invalid_campaign, window.invalid_counted) == (1, 2, 0)
    assert sb.ledger.count(400) == 2


async def test_invalid_counts_spends_quota_on_400s(sandbox_factory: SandboxFactory) -> None:
    """--invalid-counts: each 400 for an invalid campaign spends a unit; 429 once spent."""
    sb = await sandbox_factory(campaigns=_book(1), invalid_counts=True, daily_quota=2)
    assert (await _create(sb, "c-typo"))[0] == 400
    assert (await _create(sb, "c-typo"))[0] == 400
    assert (await _create(sb, "c-0000"))[0] == 429
    (window,) = sb.ledger.window_figures()
    assert (window.ours, window.invalid_campaign, window.invalid_counted) == (0, 2, 2)


async def test_listing_pages_of_100(sandbox_factory: SandboxFactory) -> None:
    """/campaigns/list answers pages of 100 as Braze documents, then an empty page."""
    sb = await sandbox_factory(campaigns=_book(250, ("c-old",)))
    pages = [await _list(sb, f"?page={n}&include_archived=false") for n in range(4)]
    assert [len(body["campaigns"]) for _, body in pages] == [100, 100, 51, 0]
    first = pages[0][1]
    assert first["message"] == "success"
    assert set(first["campaigns"][0]) == {"id", "last_edited", "name", "is_api_campaign", "tags"}
    assert pages[2][1]["campaigns"][-1] == {**pages[2][1]["campaigns"][-1], "id": "c-old"}
    assert pages[2][1]["campaigns"][-1]["is_api_campaign"] is False
    _, newest = await _list(sb, "?sort_direction=desc")
    assert newest["campaigns"][0]["id"] == "c-old"


async def test_listing_auth_and_permission(sandbox_factory: SandboxFactory) -> None:
    """/campaigns/list: unknown key 401, a key without campaigns.list 403, bad page 400."""
    sb = await sandbox_factory(
        campaigns=_book(3), api_keys=(KEY, "k-nolist"), keys_without_campaigns_list=("k-nolist",)
    )
    assert (await _list(sb, headers={"Authorization": "Bearer nope"}))[0] == 401
    status, body = await _list(sb, headers={"Authorization": "Bearer k-nolist"})
    assert status == 403
    assert "campaigns.list" in body["message"]
    assert (await _list(sb, "?page=-1"))[0] == 400
    assert sb.ledger.campaigns_list == {"401": 1, "403": 1, "400": 1}
