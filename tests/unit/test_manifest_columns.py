"""Header near misses of the known columns, and the explicit column mapping (issue 13)."""

from __future__ import annotations

import io

import pytest

from provisioner._config.settings import build_settings
from provisioner._core.models import RawRow
from provisioner._manifest.reader import Manifest
from provisioner.errors import ConfigError, ManifestError


def open_error(data: bytes, fmt: str = "csv", columns: dict[str, str] | None = None) -> str:
    """Open ``data`` and return the ManifestError message it must raise."""
    with (
        pytest.raises(ManifestError) as info,
        Manifest("-", fmt, stdin=io.BytesIO(data), columns=columns),
    ):
        pass
    return str(info.value)


def first_row(data: bytes, fmt: str = "csv", columns: dict[str, str] | None = None) -> RawRow:
    """The first record of ``data`` read with ``columns``."""
    with Manifest("-", fmt, stdin=io.BytesIO(data), columns=columns) as manifest:
        row = next(iter(manifest))
    assert isinstance(row, RawRow), row
    return row


@pytest.mark.parametrize(
    ("header", "column"),
    [
        ("Send ID", "send_id"),
        ("SEND_ID", "send_id"),
        ("sendId", "send_id"),
        ("send_id ", "send_id"),
        ("send-id", "send_id"),
        ("Workspace", "workspace"),
        (" WORK_SPACE", "workspace"),
        ("Campaign ID", "campaign_id"),
    ],
)
def test_csv_header_near_miss_of_a_known_column_is_refused(header: str, column: str) -> None:
    """A header that reads as a known column but is not exactly it stops at open, naming it
    and both fixes."""
    message = open_error(f"campaign_id,note,{header}\nc,n,v\n".encode())
    assert repr(header) in message
    assert f"rename it to exactly '{column}'" in message
    assert f"--column {column}=" in message
    assert "\n" not in message


def test_jsonl_first_record_near_miss_is_refused() -> None:
    """A JSONL first record with a near-miss key (``sendId``) stops at open."""
    message = open_error(b'{"campaign_id": "c", "sendId": "s"}\n', "jsonl")
    assert "'sendId'" in message
    assert "--column send_id=" in message


def test_exact_and_unrelated_columns_pass() -> None:
    """Exact names and unrelated pass-through columns are read as before."""
    row = first_row(b"campaign_id,send_id,workspace,sender,send\nc,s,w,x,y\n")
    assert dict(row.columns)["send_id"] == "s"


def test_mapped_csv_column_is_read_as_the_known_column() -> None:
    """--column send_id="Send ID" reads that column as send_id."""
    row = first_row(b"campaign_id,Send ID\nc,s1\n", columns={"send_id": "Send ID"})
    assert row.columns == (("campaign_id", "c"), ("send_id", "s1"))


def test_mapped_campaign_id_column_satisfies_the_header_check() -> None:
    """A mapped campaign id column counts as the campaign_id column."""
    row = first_row(b"Campaign,x\nc,1\n", columns={"campaign_id": "Campaign"})
    assert dict(row.columns)["campaign_id"] == "c"


def test_mapped_jsonl_key_is_renamed_in_every_record() -> None:
    """In JSONL the mapped key is renamed in each record."""
    data = b'{"cid": "c1", "x": 1}\n{"cid": "c2"}\n'
    with Manifest("-", "jsonl", stdin=io.BytesIO(data), columns={"campaign_id": "cid"}) as m:
        got = [dict(r.columns) for r in m if isinstance(r, RawRow)]
    assert [g["campaign_id"] for g in got] == ["c1", "c2"]


def test_mapping_a_column_the_header_lacks_is_refused() -> None:
    """A mapping naming a header column that does not exist stops at open."""
    message = open_error(b"campaign_id,send\nc,s\n", columns={"send_id": "Send ID"})
    assert "'Send ID'" in message
    assert "--column send_id" in message


def test_mapping_alongside_the_exact_column_is_refused() -> None:
    """A header holding both send_id and the column mapped to it is ambiguous: refused."""
    message = open_error(b"campaign_id,send_id,sid\nc,s,t\n", columns={"send_id": "sid"})
    assert "both 'send_id' and 'sid'" in message


def _settings(cli: dict[str, object], config: str | None, tmp_path: object) -> object:
    from pathlib import Path

    path = None
    if config is not None:
        path = Path(str(tmp_path)) / "c.toml"
        path.write_text(config)
    return build_settings(
        manifest="m.csv", out_dir=".", cli=cli, env={"BRAZE_API_KEY": "k" * 32}, config_path=path
    )


def test_column_mapping_from_config_and_flags(tmp_path: object) -> None:
    """[manifest] columns sets the mapping; --column overrides it per column."""
    settings = _settings(
        {"columns": ["workspace=Team"]},
        '[manifest]\ncolumns = { send_id = "Send ID", workspace = "WS" }\n',
        tmp_path,
    )
    assert dict(settings.columns) == {"send_id": "Send ID", "workspace": "Team"}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("cli", "config", "needle"),
    [
        ({"columns": ["send_id"]}, None, "is not column=name"),
        ({"columns": ["note=Note"]}, None, "'note' is not a column that can be mapped"),
        ({}, "[manifest]\ncolumns = 3\n", "must be a table"),
        ({}, '[manifest]\ncolumns = { send_id = "" }\n', "must name a column"),
    ],
)
def test_bad_column_mappings_are_config_errors(
    cli: dict[str, object], config: str | None, needle: str, tmp_path: object
) -> None:
    """A malformed mapping stops before anything runs, saying what is wrong."""
    with pytest.raises(ConfigError, match=needle):
        _settings(cli, config, tmp_path)
