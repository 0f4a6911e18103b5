"""The campaign check against the sandbox: unknown and non-API campaigns fail before
spending quota; a key without campaigns.list, a failing listing and paging."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from structlog.testing import capture_logs

from provisioner.api import run_pipeline
from provisioner.sandbox.campaigns import SandboxCampaign
from tests.conftest import SandboxFactory

from .helpers import KEY, cli_env, outputs, settings_for, write_csv
from .test_cli import provisioner

N_VALID = 90
N_UNKNOWN = 6
N_NOT_API = 4


def _book(extra: int = 0) -> tuple[SandboxCampaign, ...]:
    api = [SandboxCampaign(f"c{i:06d}") for i in range(N_VALID + extra)]
    legacy = [SandboxCampaign(f"old{i}", is_api=False) for i in range(N_NOT_API)]
    return (*legacy, *api)


def _manifest(tmp_path: Path) -> Path:
    rows = [(f"c{i:06d}", f"s{i:06d}") for i in range(N_VALID)]
    rows += [(f"typo{i}", f"t{i}") for i in range(N_UNKNOWN)]
    rows += [(f"old{i}", f"o{i}") for i in range(N_NOT_API)]
    return write_csv(tmp_path / "m.csv", rows)


def _errors(failures: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for f in failures:
        counts[f["error"]] = counts.get(f["error"], 0) + 1
    return counts


async def test_check_refuses_invalid_campaigns_without_spending_quota(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """10% invalid campaigns under --invalid-counts: the check sends none of them, so the
    quota they would have cost stays unspent; without the check each costs a unit."""
    manifest = _manifest(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    checked = await sandbox_factory(campaigns=_book(), invalid_counts=True, daily_quota=1000)
    result = await run_pipeline(settings_for(checked.url, tmp_path / "a", manifest))
    _, failures, _, _ = outputs(tmp_path / "a" / "out")
    assert _errors(failures) == {"unknown_campaign": N_UNKNOWN, "not_api_campaign": N_NOT_API}
    assert all(f["campaign_id"] in f["message"] for f in failures)
    (window,) = checked.ledger.window_figures()
    assert (window.ours, window.invalid_campaign, window.invalid_counted) == (N_VALID, 0, 0)
    assert result.exit_code == 1

    unchecked = await sandbox_factory(campaigns=_book(), invalid_counts=True, daily_quota=1000)
    settings = settings_for(unchecked.url, tmp_path / "b", manifest, campaign_check=False)
    await run_pipeline(settings)
    (window,) = unchecked.ledger.window_figures()
    assert (window.ours, window.invalid_counted) == (N_VALID, N_UNKNOWN + N_NOT_API)
    assert unchecked.ledger.campaigns_list == {}


async def test_listing_pages_past_100_campaigns(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """A workspace with more than 100 campaigns is listed page after page, once per run."""
    sb = await sandbox_factory(campaigns=_book(extra=250))  # 344 campaigns: 4 pages
    await run_pipeline(settings_for(sb.url, tmp_path, _manifest(tmp_path)))
    _, failures, _, _ = outputs(tmp_path / "out")
    assert len(failures) == N_UNKNOWN + N_NOT_API
    assert sb.ledger.campaigns_list == {"200": 4}


async def test_key_without_list_permission_warns_once_and_goes_on(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """A key without campaigns.list: one warning naming it, rows sent unchecked (400s)."""
    sb = await sandbox_factory(campaigns=_book(), keys_without_campaigns_list=(KEY,))
    with capture_logs() as logs:
        await run_pipeline(settings_for(sb.url, tmp_path, _manifest(tmp_path)))
    warnings = [e for e in logs if e["event"] == "campaign_check_skipped"]
    assert len(warnings) == 1
    assert warnings[0]["reason"] == "no_permission"
    assert "campaigns.list" in warnings[0]["message"]
    _, failures, _, _ = outputs(tmp_path / "out")
    assert _errors(failures) == {"invalid_campaign_id": N_UNKNOWN + N_NOT_API}
    assert sb.ledger.window_figures()[0].invalid_campaign == N_UNKNOWN + N_NOT_API


async def test_failing_listing_is_retried_then_run_goes_on_unchecked(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """A listing answered 503 is retried within the retry policy, then warned about; the
    run does not stop for it."""
    sb = await sandbox_factory(campaigns=_book())
    sb.start_outage(3600)
    settings = settings_for(sb.url, tmp_path, _manifest(tmp_path), max_wait=0)
    with capture_logs() as logs:
        await run_pipeline(settings)
    warnings = [e for e in logs if e["event"] == "campaign_check_skipped"]
    assert [w["reason"] for w in warnings] == ["failed"]
    assert sb.ledger.campaigns_list == {"503": settings.retry_attempts}
    assert sb.ledger.count(503) >= 1  # the creates went ahead (and met the outage)


async def test_without_sandbox_campaigns_the_run_goes_on_unchecked(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """A server without the listing (404) is not retried: one warning, rows sent as before."""
    sb = await sandbox_factory()
    with capture_logs() as logs:
        result = await run_pipeline(settings_for(sb.url, tmp_path, _manifest(tmp_path)))
    assert [e["reason"] for e in logs if e["event"] == "campaign_check_skipped"] == ["failed"]
    assert sb.ledger.campaigns_list == {"404": 1}
    assert result.exit_code == 0


async def test_validate_counts_refused_campaigns_as_invalid(
    sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    """`validate` with a key lists the campaigns like a run: refused rows are invalid, not
    rows to send (so they need no quota); nothing is created."""
    sb = await sandbox_factory(campaigns=_book())
    env = cli_env({"PROVISIONER_BASE_URL": sb.url})
    manifest = str(_manifest(tmp_path))
    state = str(tmp_path / "state.sqlite3")
    code, out, err = await provisioner("validate", manifest, "--state", state, "--json", env=env)
    assert code == 1, err
    report = orjson.loads(out)
    assert report["errors"] == {"unknown_campaign": N_UNKNOWN, "not_api_campaign": N_NOT_API}
    assert report["to_send"] == N_VALID
    assert report["campaign_check"] == {"default": "checked"}
    assert sb.ledger.created == []
    code, out, _ = await provisioner(
        "validate", manifest, "--state", state, "--json", "--no-campaign-check", env=env
    )
    assert orjson.loads(out)["to_send"] == N_VALID + N_UNKNOWN + N_NOT_API
    assert sb.ledger.campaigns_list == {"200": 1}
