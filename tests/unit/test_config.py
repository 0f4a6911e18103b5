"""Settings: precedence, ranges, unknown keys, the base URL rule and the API key's secrecy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from provisioner._config.access import ApiKey, check_base_url
from provisioner._config.settings import Settings, build_settings
from provisioner.errors import ConfigError

ENV = {"BRAZE_API_KEY": "k-123"}


def build(
    tmp_path: Path, toml: str | None = None, env: dict[str, str] | None = None, **cli: Any
) -> Settings:
    config = None
    if toml is not None:
        config = tmp_path / "c.toml"
        config.write_text(toml)
    return build_settings(
        manifest="m.csv",
        out_dir=tmp_path / "out",
        cli=cli,
        env=ENV if env is None else env,
        config_path=config,
    )


def test_defaults_match_the_documentation(tmp_path: Path) -> None:
    """Without config, env or flags the documented defaults apply."""
    s = build(tmp_path)
    assert (s.concurrency, s.rate, s.max_wait, s.quota) == (16, 50.0, 300.0, None)
    assert s.base_url == "https://rest.iad-01.braze.com"


def test_precedence_cli_over_env_over_file(tmp_path: Path) -> None:
    """Command line > environment > config file > defaults."""
    toml = "[run]\nconcurrency = 4\nrate = 7\nquota = 9\n"
    env = dict(ENV, PROVISIONER_RATE="8", PROVISIONER_QUOTA="10")
    s = build(tmp_path, toml, env, quota=11)
    assert s.concurrency == 4  # file
    assert s.rate == 8.0  # env beats file
    assert s.quota == 11  # flag beats env


def test_unknown_key_is_named(tmp_path: Path) -> None:
    """An unknown key stops with a message naming it and the known keys."""
    with pytest.raises(ConfigError, match=r"unknown key \[run\] concurrncy.*concurrency"):
        build(tmp_path, "[run]\nconcurrncy = 4\n")


def test_out_of_range_names_key_value_and_range(tmp_path: Path) -> None:
    """Out-of-range values name the key, the value and the allowed range."""
    with pytest.raises(
        ConfigError, match=r"run.concurrency = 0 is out of range: allowed 1 to 1024"
    ):
        build(tmp_path, "[run]\nconcurrency = 0\n")


def test_wrong_type_from_env_is_named(tmp_path: Path) -> None:
    """A non-numeric environment value names the variable."""
    with pytest.raises(ConfigError, match="PROVISIONER_RATE"):
        build(tmp_path, env=dict(ENV, PROVISIONER_RATE="fast"))


LITERAL = "SECRET-KEY-0123456789abcdef"
_WS = '[[workspaces]]\nname = "us"\napi_key_env = "K_US"\n'


@pytest.mark.parametrize(
    ("toml", "advice"),
    [
        (f'[braze]\napi_key = "{LITERAL}"\n', "BRAZE_API_KEY"),
        (f'[braze]\nkey = "{LITERAL}"\n', "BRAZE_API_KEY"),
        (f'[braze]\ntoken = "{LITERAL}"\n', "BRAZE_API_KEY"),
        (f'[braze]\nrest_api_key = "{LITERAL}"\n', "BRAZE_API_KEY"),
        (f'[braze]\napiKey = "{LITERAL}"\n', "BRAZE_API_KEY"),
        (f'[braze]\nsecret = "{LITERAL}"\n', "BRAZE_API_KEY"),
        (f'[run]\napi_key = "{LITERAL}"\n', "BRAZE_API_KEY"),
        (f'api_key = "{LITERAL}"\n[run]\nrate = 5\n', "BRAZE_API_KEY"),
        (f'[secrets]\nbraze_api_key = "{LITERAL}"\n', "BRAZE_API_KEY"),
        (f'{_WS}api_key = "{LITERAL}"\n', "api_key_env"),
        (f'{_WS}key = "{LITERAL}"\n', "api_key_env"),
        (f'{_WS}token = "{LITERAL}"\n', "api_key_env"),
        (f'{_WS}rest_api_key = "{LITERAL}"\n', "api_key_env"),
        (f'{_WS}password = "{LITERAL}"\n', "api_key_env"),
    ],
)
def test_literal_key_in_config_is_refused(tmp_path: Path, toml: str, advice: str) -> None:
    """A key written in the config file ([braze], any section, top level, [[workspaces]]) is
    refused; the message says how to pass it (variable, api_key_file) and never echoes it."""
    with pytest.raises(ConfigError) as info:
        build(tmp_path, toml, env={"K_US": "k", **ENV})
    message = str(info.value)
    assert LITERAL not in message
    assert advice in message
    assert "api_key_file" in message
    assert "\n" not in message


def test_key_pasted_as_variable_name_is_not_echoed(tmp_path: Path) -> None:
    """A key pasted where api_key_env wants a variable NAME is refused without echo."""
    for toml in (
        f'[braze]\napi_key_env = "{LITERAL}"\n',
        f'[[workspaces]]\nname = "us"\napi_key_env = "{LITERAL}"\n',
    ):
        with pytest.raises(ConfigError, match="NAME of an environment variable") as info:
            build(tmp_path, toml, env={})
        assert LITERAL not in str(info.value)


def test_key_pasted_as_key_file_is_not_echoed(tmp_path: Path) -> None:
    """A key pasted where api_key_file wants a path is not echoed; a real path is named."""
    with pytest.raises(ConfigError, match="cannot be read") as info:
        build(tmp_path, f'[braze]\napi_key_file = "{LITERAL.replace("-", "")}"\n', env={})
    assert LITERAL.replace("-", "") not in str(info.value)
    with pytest.raises(ConfigError, match="cannot be read") as info:
        build(tmp_path, env={"PROVISIONER_API_KEY_FILE": LITERAL.replace("-", "")})
    assert LITERAL.replace("-", "") not in str(info.value)
    missing = tmp_path / "no-such-key"
    with pytest.raises(ConfigError, match=str(missing)):
        build(tmp_path, f'[braze]\napi_key_file = "{missing}"\n', env={})


@pytest.mark.parametrize(
    "url",
    [
        f"https://{LITERAL}@rest.iad-01.braze.com",
        f"https://user:{LITERAL}@rest.iad-01.braze.com",
        f"https://rest.iad-01.braze.com/?api_key={LITERAL}",
        f"https://rest.iad-01.braze.com/#{LITERAL}",
    ],
)
def test_key_in_base_url_is_refused_without_echo(url: str) -> None:
    """A key in the base URL (user info, query, fragment) is refused and not echoed."""
    with pytest.raises(ConfigError, match="BRAZE_API_KEY") as info:
        check_base_url(url)
    assert LITERAL not in str(info.value)


def test_missing_key_says_how_to_pass_it(tmp_path: Path) -> None:
    """No key anywhere: a one-line error naming the variable."""
    with pytest.raises(ConfigError, match="set BRAZE_API_KEY"):
        build(tmp_path, env={})


def test_key_from_named_variable_and_file(tmp_path: Path) -> None:
    """api_key_env and api_key_file are both honoured."""
    s = build(tmp_path, '[braze]\napi_key_env = "MY_KEY"\n', env={"MY_KEY": "abc"})
    assert s.api_key.reveal() == "abc"
    keyfile = tmp_path / "key"
    keyfile.write_text("from-file\n")
    s = build(tmp_path, f'[braze]\napi_key_file = "{keyfile}"\n', env={})
    assert s.api_key.reveal() == "from-file"


def test_bad_key_characters_are_refused_without_echo(tmp_path: Path) -> None:
    """A key with spaces or control characters is refused; the message does not echo it."""
    with pytest.raises(ConfigError) as info:
        build(tmp_path, env={"BRAZE_API_KEY": "abc def\n"})
    assert "abc def" not in str(info.value)


def test_key_never_in_repr_or_public_settings(tmp_path: Path) -> None:
    """The key does not appear in repr(settings), str(key) or settings.public()."""
    s = build(tmp_path, env={"BRAZE_API_KEY": "VERY-SECRET-KEY"})
    assert "VERY-SECRET-KEY" not in repr(s)
    assert "VERY-SECRET-KEY" not in str(s.api_key)
    assert "VERY-SECRET-KEY" not in repr(s.public())
    assert ApiKey("VERY-SECRET-KEY").label.startswith("ws-")


@pytest.mark.parametrize(
    "url",
    ["http://rest.iad-01.braze.com", "ftp://x", "https://user:pw@rest.iad-01.braze.com", "nohost"],
)
def test_base_url_must_be_https_except_loopback(url: str) -> None:
    """Plain http to a remote host, other schemes and credentials in the URL are refused."""
    with pytest.raises(ConfigError):
        check_base_url(url)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "http://localhost:1/", "http://[::1]:9"])
def test_loopback_http_is_allowed(url: str) -> None:
    """The sandbox on loopback may use plain http."""
    assert check_base_url(url) == url.rstrip("/")


def test_bad_derive_prefix_is_refused(tmp_path: Path) -> None:
    """A derived send_id prefix must be short printable ASCII."""
    with pytest.raises(ConfigError, match="prefix"):
        build(tmp_path, derive_send_ids="é" * 3)


def test_ca_file_from_config_and_environment(tmp_path: Path) -> None:
    """[braze] ca_file (or PROVISIONER_CA_FILE) names a PEM bundle; it is checked and kept."""
    import trustme

    bundle = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(bundle))
    assert build(tmp_path, f'[braze]\nca_file = "{bundle}"\n').ca_file == str(bundle)
    env = {**ENV, "PROVISIONER_CA_FILE": str(bundle)}
    assert build(tmp_path, env=env).ca_file == str(bundle)
    assert build(tmp_path).ca_file is None


@pytest.mark.parametrize(
    ("content", "expected"), [(None, "does not exist"), ("not a certificate", "no PEM certificate")]
)
def test_bad_ca_file_is_refused_before_sending(
    tmp_path: Path, content: str | None, expected: str
) -> None:
    """A missing or non-PEM ca_file stops the run at configuration time, naming the path."""
    bundle = tmp_path / "ca.pem"
    if content is not None:
        bundle.write_text(content)
    with pytest.raises(ConfigError, match=expected) as info:
        build(tmp_path, env={**ENV, "PROVISIONER_CA_FILE": str(bundle)})
    assert str(bundle) in str(info.value)


def test_there_is_no_switch_to_skip_tls_verification(tmp_path: Path) -> None:
    """No config key turns certificate verification off: such keys are unknown keys."""
    for name in ("verify", "verify_ssl", "insecure", "ssl"):
        with pytest.raises(ConfigError, match="unknown key"):
            build(tmp_path, f"[braze]\n{name} = false\n")


SECRET_KEY = "0f8e6b2a-9c1d-4b7e-a3f5-2d6c8e0b1a47"


@pytest.mark.parametrize("path", [SECRET_KEY, "v1/" + SECRET_KEY.replace("-", "%2D")])
def test_key_in_base_url_path_is_refused_without_echo(tmp_path: Path, path: str) -> None:
    """A key pasted into the base URL's path (plain or %-encoded) is refused, not echoed."""
    with pytest.raises(ConfigError, match="holds the API key") as info:
        build(
            tmp_path,
            env={"BRAZE_API_KEY": SECRET_KEY, "PROVISIONER_BASE_URL": f"https://x.test/{path}"},
        )
    assert SECRET_KEY not in str(info.value)
    assert "%2D" not in str(info.value)


def test_a_refused_base_url_never_shows_its_path() -> None:
    """Any refusal shows only scheme, host and port: a key hidden in the path is not echoed."""
    with pytest.raises(ConfigError, match="plain http") as info:
        check_base_url(f"http://rest.example.com/{SECRET_KEY}")
    assert SECRET_KEY not in str(info.value)
    assert "'http://rest.example.com' (path not shown)" in str(info.value)


def test_a_deeply_nested_config_is_refused_with_exit_2(tmp_path: Path) -> None:
    """TOML nested 100,000 deep is a ConfigError (exit 2), not a RecursionError traceback."""
    with pytest.raises(ConfigError, match="too deeply") as info:
        build(tmp_path, "[run]\nx = " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert info.value.exit_code == 2


def test_a_config_larger_than_the_limit_is_refused_unread(tmp_path: Path) -> None:
    """A config file over MAX_CONFIG_BYTES is refused before parsing."""
    with pytest.raises(ConfigError, match="larger than"):
        build(tmp_path, "# " + "x" * (1 << 20) + "\n")


def test_a_config_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 are named as such (exit 2), not a traceback."""
    config = tmp_path / "c.toml"
    config.write_bytes(b"[run]\nrate = 1 # \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        build_settings(manifest="m.csv", out_dir=tmp_path, cli={}, env=ENV, config_path=config)


def test_absurdly_many_workspaces_are_refused(tmp_path: Path) -> None:
    """More [[workspaces]] than MAX_WORKSPACES stop the run before anything is built."""
    tables = "".join(f'[[workspaces]]\nname = "w{i}"\napi_key_env = "K"\n' for i in range(1001))
    with pytest.raises(ConfigError, match="more than the 1,000"):
        build(tmp_path, tables, env={"K": "k-1"})


def test_a_missing_key_is_an_error_unless_validate_asks(tmp_path: Path) -> None:
    """No key: build_settings refuses (run); with require_key=False (validate) the key is a
    MissingApiKey that has no label of a real key and raises the same error if revealed."""
    from provisioner._config.access import MissingApiKey

    with pytest.raises(ConfigError, match="no API key: set BRAZE_API_KEY"):
        build_settings(manifest="m.csv", out_dir=tmp_path, cli={}, env={})
    settings = build_settings(manifest="m.csv", out_dir=tmp_path, cli={}, env={}, require_key=False)
    (ws,) = settings.workspaces
    assert isinstance(ws.api_key, MissingApiKey)
    assert not ws.api_key.present
    assert ApiKey("k-123").present
    assert ws.api_key.variable == "BRAZE_API_KEY"
    assert not ws.api_key.label.startswith("ws-")
    with pytest.raises(ConfigError, match="no API key: set BRAZE_API_KEY"):
        ws.api_key.reveal()
    # A key that is set but malformed is still refused.
    with pytest.raises(ConfigError, match="copy it again"):
        build_settings(
            manifest="m.csv", out_dir=tmp_path, cli={}, env={"BRAZE_API_KEY": "a b"},
            require_key=False,
        )  # fmt: skip
