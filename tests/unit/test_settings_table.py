"""One settings table: build_settings(cli=...) is checked like the config file, flags derive."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

import pytest

from provisioner._cli.args import EXPORT_SETTINGS, RUN_SETTINGS, build_parser
from provisioner._config.settings import Settings, build_settings
from provisioner._config.table import BY_ATTR, COMMAND_ONLY, FLAG_ONLY, KEYS
from provisioner.errors import ConfigError

ENV = {"BRAZE_API_KEY": "k-123"}


def build(tmp_path: Path, **cli: object) -> Settings:
    return build_settings(manifest="m.csv", out_dir=tmp_path, cli=cli, env=ENV)


def test_unknown_cli_key_is_refused_with_the_near_key(tmp_path: Path) -> None:
    """``cli={"qouta": 80}`` used to run without a cap; now it names the key and suggests quota."""
    with pytest.raises(ConfigError, match=r"unknown key 'qouta' \(did you mean 'quota'\?"):
        build(tmp_path, qouta=80)


@pytest.mark.parametrize("value", ["no", 0, 1, "true"])
def test_flag_settings_take_only_a_bool(tmp_path: Path, value: object) -> None:
    """``cli={"force": "no"}`` used to turn force on; a non-bool is refused, naming it."""
    with pytest.raises(ConfigError, match=r"--force: force = .* must be true or false"):
        build(tmp_path, force=value)


def test_flag_settings_accept_bools_and_none(tmp_path: Path) -> None:
    """True turns a flag on; False and None (not given) leave it off."""
    assert build(tmp_path, force=True, retry_in_doubt=True).retry_in_doubt is True
    assert build(tmp_path, force=False).force is False
    assert build(tmp_path, force=None).force is False


def test_manifest_format_is_checked_against_its_choices(tmp_path: Path) -> None:
    """A caller's format must be one the reader knows (csv, jsonl), as the flag enforces."""
    with pytest.raises(ConfigError, match="must be one of csv, jsonl"):
        build(tmp_path, manifest_format="xml")


def test_wrong_type_from_a_caller_gets_the_config_file_message(tmp_path: Path) -> None:
    """A string quota fails as in the config file: the key, the value, the constraint."""
    with pytest.raises(ConfigError, match=r"run.quota = 'lots' is not a whole number"):
        build(tmp_path, quota="lots")


def test_settings_defaults_are_the_table_defaults() -> None:
    """Every Settings field that is a table row has exactly the row's default."""
    by_field = {f.name: f for f in fields(Settings)}
    for attr, key in BY_ATTR.items():
        assert by_field[attr].default == key.default, attr


def test_every_table_flag_is_an_option_of_run() -> None:
    """Each row with a flag is a ``provisioner run`` option, with the row's help line."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    run = sub.choices["run"]
    options = {a.option_strings[0]: a for a in run._actions if a.option_strings}
    for key in (*KEYS, *FLAG_ONLY):
        if key.flag is not None:
            assert key.attr in RUN_SETTINGS
            assert options[key.flag].help == key.flag_help
            assert options[key.flag].dest == key.attr


def test_command_only_flags_are_options_of_export_and_not_settings() -> None:
    """``export --format`` comes from the table (COMMAND_ONLY), with the row's help and
    choices, and is no run setting nor ``cli={...}`` key."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    export = sub.choices["export"]
    options = {a.option_strings[0]: a for a in export._actions if a.option_strings}
    for key in COMMAND_ONLY:
        assert key.name in EXPORT_SETTINGS
        assert key.name not in BY_ATTR
        assert key.flag is not None
        assert options[key.flag].help == key.flag_help
        assert options[key.flag].dest == key.name
        assert tuple(options[key.flag].choices or ()) == key.choices
