"""Settings: defaults < config file < environment < command line, checked once, frozen.

The config file is TOML with sections; every key is listed in ``KEYS`` with its type,
range, environment variable and default, so that the documentation, the error messages
and the precedence rule come from one table.
"""

from __future__ import annotations

import codecs
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from provisioner._config.access import (
    DEFAULT_BASE_URL,
    DEFAULT_KEY_ENV,
    ApiKey,
    check_base_url,
    check_ca_file,
    load_api_key,
)
from provisioner._config.workspaces import DEFAULT_NAME as DEFAULT_WORKSPACE
from provisioner._config.workspaces import (
    RawWorkspace,
    WorkspaceSettings,
    default_name,
    looks_secret,
    parse_workspaces,
    secret_advice,
)
from provisioner.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Key:
    """One setting: where it lives in the file, its environment variable, type and range."""

    section: str
    name: str
    kind: type
    default: object
    env: str | None = None
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    doc: str = ""


# One row per setting: section, name, type, default, environment variable, range,
# choices, documentation. The table is the single source for precedence, checks and
# messages; it is laid out as a table on purpose.
# fmt: off
KEYS: tuple[Key, ...] = (
    Key("braze", "base_url", str, DEFAULT_BASE_URL, "PROVISIONER_BASE_URL",
        doc="REST endpoint of your Braze instance (https; http only for loopback)"),
    Key("braze", "api_key_env", str, DEFAULT_KEY_ENV, None,
        doc="name of the environment variable that holds the REST API key"),
    Key("braze", "api_key_file", str, None, "PROVISIONER_API_KEY_FILE",
        doc="file holding the REST API key (used when the variable is unset)"),
    Key("braze", "ca_file", str, None, "PROVISIONER_CA_FILE",
        doc="PEM CA bundle trusted for https in addition to the system's (e.g. a proxy's CA)"),
    Key("run", "concurrency", int, 16, "PROVISIONER_CONCURRENCY", 1, 1024,
        doc="requests in flight at once"),
    Key("run", "rate", float, 50.0, "PROVISIONER_RATE", 0.01, 1_000_000,
        doc="requests per second, paced evenly"),
    Key("run", "quota", int, None, "PROVISIONER_QUOTA", 1, 1_000_000_000,
        doc="cap on creations per quota window, below the server's limit"),
    Key("run", "pace", str, "asap", "PROVISIONER_PACE", choices=("asap", "even"),
        doc="asap: as fast as rate and quota allow; even: spread the quota over the window"),
    Key("run", "pace_span", float, None, None, 1, 31_622_400,
        doc="with pace = even: spread over this many seconds (default: until the reset)"),
    Key("run", "max_wait", float, 300.0, "PROVISIONER_MAX_WAIT", 0, 604800,
        doc="longest pause for a rate-limit reset before deferring the rest (seconds)"),
    Key("run", "default_quota", int, 100, None, 1, 1_000_000_000,
        doc="quota assumed before the server's headers say otherwise"),
    Key("run", "default_window", int, 86400, None, 1, 31_622_400,
        doc="quota window assumed before the server's headers say otherwise (seconds)"),
    Key("run", "connect_timeout", float, 5.0, "PROVISIONER_CONNECT_TIMEOUT", 0.05, 300,
        doc="seconds to open a connection"),
    Key("run", "read_timeout", float, 30.0, "PROVISIONER_READ_TIMEOUT", 0.05, 600,
        doc="seconds to wait for a response once the request is sent"),
    Key("run", "progress_interval", float, 10.0, None, 0.1, 3600,
        doc="seconds between progress events"),
    Key("retry", "attempts", int, 5, "PROVISIONER_RETRY_ATTEMPTS", 1, 100,
        doc="requests per row at most, for 5xx and connection errors"),
    Key("retry", "max_time", float, 120.0, None, 0, 86400,
        doc="seconds a row may spend retrying"),
    Key("retry", "backoff_base", float, 0.5, None, 0, 600,
        doc="full-jitter backoff: base seconds"),
    Key("retry", "backoff_cap", float, 30.0, None, 0, 3600,
        doc="full-jitter backoff: largest sleep in seconds"),
    Key("run", "derive_send_ids", str, None, "PROVISIONER_DERIVE_SEND_IDS",
        doc="give rows without a send_id a deterministic one with this prefix"),
    Key("run", "metrics_file", str, None, "PROVISIONER_METRICS_FILE",
        doc="Prometheus textfile to write during and after the run"),
    Key("run", "max_row_bytes", int, 1_048_576, "PROVISIONER_MAX_ROW_BYTES", 1024, 67_108_864,
        doc="a manifest record longer than this (bytes) fails as line_too_long, unparsed"),
    Key("state", "path", str, None, "PROVISIONER_STATE",
        doc="state store file (default: $XDG_STATE_HOME/provisioner/state.sqlite3)"),
    Key("log", "format", str, None, "PROVISIONER_LOG_FORMAT", choices=("json", "console"),
        doc="log format (default: console on a terminal, json otherwise)"),
    Key("log", "level", str, "info", "PROVISIONER_LOG_LEVEL",
        choices=("debug", "info", "warning", "error"), doc="log level"),
)
# fmt: on
KEYS_BY_NAME = {(k.section, k.name): k for k in KEYS}
_KEY_ADVICE = f"{DEFAULT_KEY_ENV} (or the one api_key_env names)"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a run needs, checked and frozen. Built by ``build_settings``."""

    manifest: str
    out_dir: Path
    api_key: ApiKey = field(repr=False)
    base_url: str = DEFAULT_BASE_URL
    ca_file: str | None = None
    manifest_format: str | None = None
    concurrency: int = 16
    rate: float = 50.0
    quota: int | None = None
    max_wait: float = 300.0
    pace: str = "asap"
    pace_span: float | None = None
    default_quota: int = 100
    default_window: int = 86400
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    progress_interval: float = 10.0
    retry_attempts: int = 5
    retry_max_time: float = 120.0
    retry_backoff_base: float = 0.5
    retry_backoff_cap: float = 30.0
    log_format: str | None = None
    log_level: str = "info"
    config_path: Path | None = None
    state_path: str | None = None
    metrics_file: str | None = None
    derive_send_ids: str | None = None
    max_row_bytes: int = 1_048_576
    force: bool = False
    retry_in_doubt: bool = False
    workspaces: tuple[WorkspaceSettings, ...] = ()
    default_workspace: str = DEFAULT_WORKSPACE
    #: (known column, the manifest's name for it), from --column and [manifest] columns.
    columns: tuple[tuple[str, str], ...] = ()
    #: --encoding (None: UTF-8, checked) and --delimiter of the manifest.
    manifest_encoding: str | None = None
    csv_delimiter: str = ","

    def public(self) -> dict[str, object]:
        """The settings as plain data without the key, for summaries and the state store."""
        out: dict[str, object] = {}
        for f in fields(self):
            if f.name == "api_key":
                continue
            if f.name == "workspaces":
                out[f.name] = [
                    {"name": w.name, "base_url": w.base_url, "quota": w.quota, "rate": w.rate,
                     "concurrency": w.concurrency, "label": w.api_key.label}
                    for w in self.workspaces
                ]  # fmt: skip
                continue
            value = getattr(self, f.name)
            out[f.name] = str(value) if isinstance(value, Path) else value
        return out


_FIELD_FOR = {
    ("braze", "base_url"): "base_url",
    ("braze", "ca_file"): "ca_file",
    ("run", "concurrency"): "concurrency",
    ("run", "rate"): "rate",
    ("run", "quota"): "quota",
    ("run", "max_wait"): "max_wait",
    ("run", "pace"): "pace",
    ("run", "pace_span"): "pace_span",
    ("run", "default_quota"): "default_quota",
    ("run", "default_window"): "default_window",
    ("run", "connect_timeout"): "connect_timeout",
    ("run", "read_timeout"): "read_timeout",
    ("run", "progress_interval"): "progress_interval",
    ("retry", "attempts"): "retry_attempts",
    ("retry", "max_time"): "retry_max_time",
    ("retry", "backoff_base"): "retry_backoff_base",
    ("retry", "backoff_cap"): "retry_backoff_cap",
    ("run", "derive_send_ids"): "derive_send_ids",
    ("run", "metrics_file"): "metrics_file",
    ("run", "max_row_bytes"): "max_row_bytes",
    ("state", "path"): "state_path",
    ("log", "format"): "log_format",
    ("log", "level"): "log_level",
}


def load_config_file(path: Path) -> dict[tuple[str, str], object]:
    """Read a TOML config into {(section, key): value}, refusing unknown keys and secrets.

    ``[[workspaces]]`` tables come back checked under the key ("workspaces", "")."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist: check the --config path") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from exc
    values: dict[tuple[str, str], object] = {}
    table = data.get("manifest")
    if isinstance(table, dict) and "columns" in table:
        values[("manifest", "columns")] = parse_columns(
            table.pop("columns"), f"config file {path}: [manifest] columns"
        )
        if not table:
            del data["manifest"]
    if "workspaces" in data:
        values[("workspaces", "")] = parse_workspaces(data.pop("workspaces"), path)
    for section, table in data.items():
        if not isinstance(table, dict) and looks_secret(section):
            # A top-level `api_key = "..."`: the same refusal as inside a section.
            raise ConfigError(f"config file {path}: {section} {secret_advice(_KEY_ADVICE)}")
        if not isinstance(table, dict):
            raise ConfigError(
                f"config file {path}: top-level key {section!r} must be a [section]; "
                f"sections are {', '.join(sorted({k.section for k in KEYS}))}"
            )
        for name, value in table.items():
            if (section, name) not in KEYS_BY_NAME and looks_secret(name):
                raise ConfigError(
                    f"config file {path}: [{section}] {name} {secret_advice(_KEY_ADVICE)}"
                )
            if (section, name) not in KEYS_BY_NAME:
                known = ", ".join(k.name for k in KEYS if k.section == section)
                hint = f"known keys in [{section}]: {known}" if known else "unknown section"
                raise ConfigError(f"config file {path}: unknown key [{section}] {name} ({hint})")
            values[(section, name)] = value
    return values


def _coerce(key: Key, value: object, origin: str) -> object:
    """Check one value against its key's type and range; origin names where it came from."""
    where = f"{origin}: {key.section}.{key.name} = {value!r}"
    if value is None:
        return None
    if key.kind is int:
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise ConfigError(f"{where} is not a whole number") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} is not a whole number")
    elif key.kind is float:
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise ConfigError(f"{where} is not a number") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} is not a number")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{where} is not a finite number")
    elif not isinstance(value, str):
        raise ConfigError(f"{where} must be a string")
    if key.choices and value not in key.choices:
        raise ConfigError(f"{where} must be one of {', '.join(key.choices)}")
    if isinstance(value, int | float) and (
        (key.low is not None and value < key.low) or (key.high is not None and value > key.high)
    ):
        raise ConfigError(f"{where} is out of range: allowed {key.low:g} to {key.high:g}")
    return value


MAX_PREFIX = 24
#: The columns ``--column`` / ``[manifest] columns`` may map (the ones whose value decides
#: what is sent).
MAPPABLE_COLUMNS = ("campaign_id", "send_id", "workspace")


def parse_columns(value: object, origin: str) -> dict[str, str]:
    """A column mapping {known column: the manifest's name for it}, checked.

    ``value`` is a TOML table or a list of ``column=name`` strings (``--column``)."""
    if isinstance(value, list):
        pairs: dict[str, object] = {}
        for item in value:
            column, eq, name = str(item).partition("=")
            if not eq:
                raise ConfigError(
                    f"{origin} {item!r} is not column=name: write e.g. --column send_id='Send ID'"
                )
            pairs[column.strip()] = name
        value = pairs
    if not isinstance(value, dict):
        raise ConfigError(f'{origin} must be a table, e.g. columns = {{ send_id = "Send ID" }}')
    out: dict[str, str] = {}
    for column, name in value.items():
        if column not in MAPPABLE_COLUMNS:
            raise ConfigError(
                f"{origin}: {column!r} is not a column that can be mapped; "
                f"mappable: {', '.join(MAPPABLE_COLUMNS)}"
            )
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{origin}: {column} = {name!r} must name a column of the manifest")
        out[column] = name
    sources = list(out.values())
    if len(set(sources)) != len(sources):
        raise ConfigError(f"{origin}: one manifest column is mapped to two known columns")
    return out


def check_send_id_prefix(prefix: str) -> str:
    """A derived send_id prefix must be short printable ASCII without spaces."""
    if not prefix or len(prefix) > MAX_PREFIX or any(not 0x21 <= ord(c) <= 0x7E for c in prefix):
        raise ConfigError(
            f"send_id prefix {prefix[:40]!r} must be 1 to {MAX_PREFIX} printable ASCII characters "
            f"without spaces (derived send ids must stay ASCII and at most 64 characters)"
        )
    return prefix


def build_settings(
    *,
    manifest: str,
    out_dir: str | Path,
    cli: Mapping[str, object],
    env: Mapping[str, str] | None = None,
    config_path: str | Path | None = None,
) -> Settings:
    """Merge defaults < config file < environment < command line and check every value.

    ``cli`` maps setting names (``Settings`` field names) to values given on the
    command line; None means "not given".
    """
    env = os.environ if env is None else env
    path = Path(config_path) if config_path else None
    from_file = load_config_file(path) if path else {}
    merged: dict[str, Any] = {}
    raw: dict[tuple[str, str], object] = {}
    for key in KEYS:
        value: object = key.default
        # Every layer that sets a key is checked, even when a higher one overrides it:
        # a broken config file is reported now, not on the night the flag is dropped.
        if (key.section, key.name) in from_file:
            value = _coerce(key, from_file[(key.section, key.name)], f"config file {path}")
        if key.env and env.get(key.env):
            value = _coerce(key, env[key.env], f"environment variable {key.env}")
        field_name = _FIELD_FOR.get((key.section, key.name))
        if field_name and cli.get(field_name) is not None:
            value = _coerce(key, cli[field_name], f"--{field_name.replace('_', '-')}")
        raw[(key.section, key.name)] = value
        if field_name:
            merged[field_name] = value
    base_url = check_base_url(str(merged.pop("base_url")))
    declared_any = bool(from_file.get(("workspaces", "")))
    # With declared workspaces each carries its own key; the [braze] one is optional then.
    key_var = str(raw[("braze", "api_key_env")])
    key_file = _str_or_none(raw[("braze", "api_key_file")])
    api_key = (
        None
        if declared_any and not (env.get(key_var) or key_file)
        else load_api_key(env, key_var, key_file)
    )
    declared = from_file.get(("workspaces", ""), ())
    assert isinstance(declared, tuple)
    workspaces = _workspaces(declared, base_url, api_key, merged, cli, env)
    prefix = merged.get("derive_send_ids")
    if prefix is not None:
        check_send_id_prefix(prefix)
    if merged.get("ca_file") is not None:
        check_ca_file(str(merged["ca_file"]))
    fmt = cli.get("manifest_format")
    columns = from_file.get(("manifest", "columns"), {})
    assert isinstance(columns, dict)
    if cli.get("columns"):
        columns = {**columns, **parse_columns(cli["columns"], "--column")}
    settings = Settings(
        manifest=manifest,
        out_dir=Path(out_dir),
        api_key=api_key or workspaces_default_key(workspaces, declared),
        base_url=base_url,
        manifest_format=str(fmt) if fmt else None,
        config_path=path,
        force=bool(cli.get("force")),
        retry_in_doubt=bool(cli.get("retry_in_doubt")),
        workspaces=workspaces,
        default_workspace=default_name(workspaces, declared),
        columns=tuple(columns.items()),
        manifest_encoding=_encoding(cli.get("manifest_encoding")),
        csv_delimiter=_delimiter(cli.get("csv_delimiter")),
        **merged,
    )
    return settings


def _workspaces(
    declared: tuple[RawWorkspace, ...],
    base_url: str,
    api_key: ApiKey | None,
    merged: Mapping[str, Any],
    cli: Mapping[str, object],
    env: Mapping[str, str],
) -> tuple[WorkspaceSettings, ...]:
    """The run's workspaces: the declared ones (flags override their values), or one."""
    if not declared:
        assert api_key is not None
        return (WorkspaceSettings(DEFAULT_WORKSPACE, base_url, api_key),)
    out = []
    for w in declared:
        key = load_api_key(env, w.api_key_env or "", w.api_key_file)
        out.append(
            WorkspaceSettings(
                name=w.name,
                base_url=check_base_url(w.base_url) if w.base_url else base_url,
                api_key=key,
                quota=_flag_or(cli.get("quota"), w.quota),
                rate=_flag_or(cli.get("rate"), w.rate),
                concurrency=_flag_or(cli.get("concurrency"), w.concurrency),
            )
        )
    return tuple(out)


def _flag_or(flag: object, own: Any) -> Any:
    """A command-line value applies to every workspace; else the workspace's own."""
    return own if flag is None else flag


def workspaces_default_key(
    workspaces: tuple[WorkspaceSettings, ...], declared: tuple[RawWorkspace, ...]
) -> ApiKey:
    """The default workspace's key (``Settings.api_key`` for single-workspace callers)."""
    name = default_name(workspaces, declared)
    return next(w.api_key for w in workspaces if w.name == name)


def _encoding(value: object) -> str | None:
    """--encoding: a codec Python knows (cp1252, latin-1, utf-16 ...), checked now."""
    if value is None:
        return None
    try:
        return codecs.lookup(str(value)).name
    except LookupError:
        raise ConfigError(
            f"--encoding {str(value)[:40]!r} is not a known encoding: use e.g. cp1252, "
            "latin-1, utf-16 (iconv -l lists the names)"
        ) from None


def _delimiter(value: object) -> str:
    """--delimiter: one character (``tab`` or ``\\t`` for a tab)."""
    if value is None:
        return ","
    text = {"tab": "\t", "\\t": "\t"}.get(str(value), str(value))
    if len(text) != 1 or text in '\r\n"':
        raise ConfigError(
            f"--delimiter {str(value)[:20]!r} must be one character (e.g. ';', '|' or tab), "
            "not a quote or a line break"
        )
    return text


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)
