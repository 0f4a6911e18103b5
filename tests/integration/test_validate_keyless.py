"""`provisioner validate` without an API key (a CI job linting a manifest): the manifest is
validated, and the report says what it could not compare with the store and Braze."""

from __future__ import annotations

from pathlib import Path

import orjson

from provisioner.api import run_pipeline
from provisioner.sandbox.server import Sandbox

from .helpers import campaigns, cli_env, settings_for, write_csv
from .test_cli import provisioner

NOT_COMPARED = "no API key (BRAZE_API_KEY is not set), so not compared with the state store"


def keyless_env(**extra: str) -> dict[str, str]:
    """The CLI's environment with no key anywhere (no variable, no key file, no config)."""
    env = cli_env()
    for name in ("BRAZE_API_KEY", "PROVISIONER_API_KEY_FILE", "PROVISIONER_CONFIG"):
        env.pop(name, None)
    return {**env, **extra}


async def test_a_clean_manifest_validates_without_a_key(tmp_path: Path) -> None:
    """Exit 0 as for a clean validate; one line says the store and Braze were not compared
    (campaign check skipped, quota not checked); --json says the same."""
    manifest = write_csv(tmp_path / "m.csv", campaigns(4))
    args = ("validate", str(manifest), "--state", str(tmp_path / "none.sqlite3"))
    code, out, err = await provisioner(*args, env=keyless_env())
    assert code == 0, err
    assert "error" not in err
    lines = [line for line in out.splitlines() if "not compared" in line]
    assert len(lines) == 1, out
    assert NOT_COMPARED in lines[0]
    assert "campaign check skipped" in lines[0]
    assert "quota not checked" in lines[0]
    assert "to send: 4" in out
    assert "campaigns not checked" not in out  # said once, in that line

    code, out, err = await provisioner(*args, "--json", env=keyless_env())
    assert code == 0, err
    report = orjson.loads(out)
    assert report["to_send"] == 4
    assert report["invalid"] == 0
    assert report["campaign_check"] == {"default": "skipped: no API key"}
    ((entry,),) = [report["not_compared"]]
    assert entry["name"] == "default"
    assert NOT_COMPARED in entry["message"]
    assert [w["compared"] for w in report["workspaces"]] == [False]


async def test_a_dirty_manifest_still_fails_without_a_key(tmp_path: Path) -> None:
    """Invalid rows and duplicates are found as with a key: exit 1."""
    manifest = write_csv(
        tmp_path / "m.csv", [*campaigns(3), ("", "s-empty"), ("c000001", "s000001")]
    )
    code, out, err = await provisioner("validate", str(manifest), "--json", env=keyless_env())
    assert code == 1, err
    report = orjson.loads(out)
    assert report["invalid"] == 1
    assert report["errors"] == {"empty_field": 1}
    assert report["duplicates"] == 1
    assert report["to_send"] == 3


async def test_a_header_error_stops_validate_without_a_key(tmp_path: Path) -> None:
    """The header checks run first, key or not: exit 2 naming the column."""
    manifest = write_csv(tmp_path / "m.csv", campaigns(2), header=("campaign_id", "Send ID"))
    code, _, err = await provisioner("validate", str(manifest), env=keyless_env())
    assert code == 2
    assert "Send ID" in err


async def test_without_a_key_the_store_is_not_compared(sandbox: Sandbox, tmp_path: Path) -> None:
    """After a run created the rows, validate with the key counts them as provisioned;
    without it, nothing can be looked up (rows are filed under the key's hash), and the
    report says so rather than claim they were never done."""
    manifest = write_csv(tmp_path / "m.csv", campaigns(3))
    await run_pipeline(settings_for(sandbox.url, tmp_path, manifest))
    args = ("validate", str(manifest), "--json", "--state", str(tmp_path / "state.sqlite3"))
    code, out, err = await provisioner(*args)  # cli_env() has the sandbox's key
    assert code == 0, err
    keyed = orjson.loads(out)
    assert (keyed["already_provisioned"], keyed["to_send"], keyed["not_compared"]) == (3, 0, [])
    code, out, err = await provisioner(*args, env=keyless_env())
    assert code == 0, err
    keyless = orjson.loads(out)
    assert (keyless["already_provisioned"], keyless["to_send"]) == (0, 3)
    assert len(keyless["not_compared"]) == 1


async def test_with_two_workspaces_only_the_keyless_one_is_not_compared(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """us has its key, eu not: us is compared (campaign check, store), eu is named as not
    compared; `run` with the same environment still refuses to start (exit 2)."""
    config = tmp_path / "ws.toml"
    config.write_text(
        f'[[workspaces]]\nname = "us"\nbase_url = "{sandbox.url}"\napi_key_env = "KEY_US"\n'
        "default = true\n\n"
        f'[[workspaces]]\nname = "eu"\nbase_url = "{sandbox.url}"\napi_key_env = "KEY_EU"\n'
    )
    rows = [("c1", "s1", "us"), ("c2", "s2", "eu")]
    manifest = write_csv(tmp_path / "m.csv", rows, header=("campaign_id", "send_id", "workspace"))
    env = keyless_env(KEY_US="sandbox-key")
    code, out, err = await provisioner(
        "validate", str(manifest), "--json", "--config", str(config), env=env
    )
    assert code == 0, err
    report = orjson.loads(out)
    assert [e["name"] for e in report["not_compared"]] == ["eu"]
    assert "KEY_EU is not set" in report["not_compared"][0]["message"]
    assert {w["name"]: w["compared"] for w in report["workspaces"]} == {"us": True, "eu": False}
    assert report["campaign_check"]["eu"] == "skipped: no API key"
    assert report["campaign_check"]["us"] != "skipped: no API key"
    code, _, err = await provisioner(
        "run", str(manifest), "--config", str(config), "--out", str(tmp_path / "out"),
        "--state", str(tmp_path / "state.sqlite3"), env=env,
    )  # fmt: skip
    assert code == 2
    assert "no API key" in err
    assert "KEY_EU" in err
    assert sandbox.ledger.total == 0


async def test_a_malformed_key_is_still_refused(tmp_path: Path) -> None:
    """A key that is set but broken is a mistake to report, not a missing key: exit 2."""
    manifest = write_csv(tmp_path / "m.csv", campaigns(1))
    code, _, err = await provisioner(
        "validate", str(manifest), env=keyless_env(BRAZE_API_KEY="two words")
    )
    assert code == 2
    assert "copy it again" in err
