"""Settings: defaults < config file < environment < command line, checked once, frozen.

The config file is TOML with sections; every setting is a row of the table in
``provisioner._config.table`` (type, range, environment variable, default, flag), so that
the documentation, the error messages, the precedence rule and ``Settings``' defaults come
from one place. A caller's ``cli={...}`` is checked like the config file: an unknown key or
a wrong type is refused with the same kind of message.
"""

from __future__ import annotations

import codecs
import difflib
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from provisioner._config.access import (
    DEFAULT_KEY_ENV,
    ApiKey,
    MissingApiKey,
    NoApiKey,
    check_base_url,
    check_ca_file,
    check_key_not_in_url,
    load_api_key,
)
from provisioner._config.table import BY_ATTR, KEYS, KEYS_BY_NAME, Key, default
from provisioner._config.workspaces import DEFAULT_NAME as DEFAULT_WORKSPACE
from provisioner._config.workspaces import (
    RawWorkspace,
    WorkspaceSettings,
    default_name,
    looks_secret,
    parse_workspaces,
    secret_advice,
)
from provisioner._core.identity import MAX_SEND_ID
from provisioner._core.redact import redact_url
from provisioner.errors import ConfigError

_KEY_ADVICE = f"{DEFAULT_KEY_ENV} (or the one api_key_env names)"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a run needs, checked and frozen. Built by ``build_settings``."""

    manifest: str
    out_dir: Path
    api_key: ApiKey = field(repr=False)
    base_url: str = default("base_url")
    ca_file: str | None = default("ca_file")
    manifest_format: str | None = default("manifest_format")
    concurrency: int = default("concurrency")
    rate: float = default("rate")
    quota: int | None = default("quota")
    max_wait: float = default("max_wait")
    pace: str = default("pace")
    pace_span: float | None = default("pace_span")
    default_quota: int = default("default_quota")
    default_window: int = default("default_window")
    connect_timeout: float = default("connect_timeout")
    read_timeout: float = default("read_timeout")
    request_timeout: float = default("request_timeout")
    progress_interval: float = default("progress_interval")
    retry_attempts: int = default("retry_attempts")
    retry_max_time: float = default("retry_max_time")
    retry_backoff_base: float = default("retry_backoff_base")
    retry_backoff_cap: float = default("retry_backoff_cap")
    log_format: str | None = default("log_format")
    log_level: str = default("log_level")
    config_path: Path | None = None
    state_path: str | None = default("state_path")
    state_lock_wait: float = default("state_lock_wait")
    #: Retention (``provisioner._state.retention.Policy``): 0 days is off.
    state_keep_days: float = default("state_keep_days")
    state_keep_runs: int = default("state_keep_runs")
    #: --group: this run is one worker of a group (``_pipeline/group.py``).
    state_group: str | None = default("state_group")
    state_group_chunk: int = default("state_group_chunk")
    metrics_file: str | None = default("metrics_file")
    derive_send_ids: str | None = default("derive_send_ids")
    max_row_bytes: int = default("max_row_bytes")
    force: bool = default("force")
    retry_in_doubt: bool = default("retry_in_doubt")
    #: List each workspace's campaigns first and refuse rows for unknown/non-API ones.
    campaign_check: bool = default("campaign_check")
    workspaces: tuple[WorkspaceSettings, ...] = ()
    default_workspace: str = DEFAULT_WORKSPACE
    #: (known column, the manifest's name for it), from --column and [manifest] columns.
    columns: tuple[tuple[str, str], ...] = default("columns")
    #: --encoding (None: UTF-8, checked) and --delimiter of the manifest.
    manifest_encoding: str | None = default("manifest_encoding")
    csv_delimiter: str = default("csv_delimiter")

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
            if f.name == "state_path" and isinstance(value, str) and "://" in value:
                value = redact_url(value)  # a database URL may hold a password
            out[f.name] = str(value) if isinstance(value, Path) else value
        return out


#: A config file larger than this is refused unread (a config is a few KiB; this also
#: bounds what a hostile file can make tomllib build).
MAX_CONFIG_BYTES = 1 << 20


def load_config_file(path: Path) -> dict[tuple[str, str], object]:
    """Read a TOML config into {(section, key): value}, refusing unknown keys and secrets.

    ``[[workspaces]]`` tables come back checked under the key ("workspaces", "")."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"config file {path} is larger than {MAX_CONFIG_BYTES:,} bytes: a config is a "
                "few dozen lines; check the --config path"
            )
        data = tomllib.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist: check the --config path") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 (byte {exc.start}): save it as UTF-8"
        ) from None
    except RecursionError:
        # tomllib recurses once per nested array or inline table.
        raise ConfigError(
            f"config file {path} nests arrays or tables too deeply to read: a config has "
            "no nesting beyond [[workspaces]]; check the --config path"
        ) from None
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
    label = f"{key.section}.{key.name}" if key.section else key.name
    where = f"{origin}: {label} = {value!r}"
    if value is None:
        return None
    if key.kind is bool:
        # Only a real bool: "no" or 0 from a caller must not turn a flag like force on.
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false (a bool, not {type(value).__name__})")
        return value
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
            f"without spaces (derived send ids must stay ASCII and at most {MAX_SEND_ID} "
            f"characters)"
        )
    return prefix


def build_settings(
    *,
    manifest: str,
    out_dir: str | Path,
    cli: Mapping[str, object],
    env: Mapping[str, str] | None = None,
    config_path: str | Path | None = None,
    require_key: bool = True,
) -> Settings:
    """Merge defaults < config file < environment < command line and check every value.

    ``cli`` maps setting names (``Settings`` field names) to values given on the
    command line; None means "not given". ``require_key=False`` (``validate``): a key
    that is not set becomes a ``MissingApiKey`` instead of an error (a key that is set
    but malformed, or a key file that cannot be read, is still refused).
    """
    load_key = load_api_key if require_key else _key_or_missing
    env = os.environ if env is None else env
    check_cli_keys(cli)
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
        field_name = key.attr
        if field_name and cli.get(field_name) is not None:
            value = _coerce(key, cli[field_name], f"--{field_name.replace('_', '-')}")
        raw[(key.section, key.name)] = value
        if field_name:
            merged[field_name] = value
    url = raw[("state", "url")]
    if url is not None and ("state", "path") in from_file:
        raise ConfigError(f"config file {path}: [state] has both path and url; keep one of them")
    if url is not None and merged.get("state_path") is None:  # env and flags override it
        merged["state_path"] = url
    base_url = check_base_url(str(merged.pop("base_url")))
    declared_any = bool(from_file.get(("workspaces", "")))
    # With declared workspaces each carries its own key; the [braze] one is optional then.
    key_var = str(raw[("braze", "api_key_env")])
    key_file = _str_or_none(raw[("braze", "api_key_file")])
    api_key = (
        None
        if declared_any and not (env.get(key_var) or key_file)
        else load_key(env, key_var, key_file)
    )
    declared = from_file.get(("workspaces", ""), ())
    assert isinstance(declared, tuple)
    workspaces = _workspaces(declared, base_url, api_key, merged, cli, env, load_key)
    for ws in workspaces:
        check_key_not_in_url(ws.base_url, ws.api_key)
    prefix = merged.get("derive_send_ids")
    if prefix is not None:
        check_send_id_prefix(prefix)
    if merged.get("ca_file") is not None:
        check_ca_file(str(merged["ca_file"]))
    fmt = _coerce(BY_ATTR["manifest_format"], cli.get("manifest_format"), "--format")
    columns = from_file.get(("manifest", "columns"), {})
    assert isinstance(columns, dict)
    if cli.get("columns"):
        columns = {**columns, **parse_columns(cli["columns"], "--column")}
    force = _coerce(BY_ATTR["force"], cli.get("force"), "--force")
    retry_in_doubt = _coerce(
        BY_ATTR["retry_in_doubt"], cli.get("retry_in_doubt"), "--retry-in-doubt"
    )
    campaign_check = _coerce(
        BY_ATTR["campaign_check"], cli.get("campaign_check"), "--no-campaign-check"
    )
    settings = Settings(
        manifest=manifest,
        out_dir=Path(out_dir),
        api_key=api_key or workspaces_default_key(workspaces, declared),
        base_url=base_url,
        manifest_format=str(fmt) if fmt else None,
        config_path=path,
        force=bool(force),
        retry_in_doubt=bool(retry_in_doubt),
        campaign_check=campaign_check is not False,
        workspaces=workspaces,
        default_workspace=default_name(workspaces, declared),
        columns=tuple(columns.items()),
        manifest_encoding=_encoding(cli.get("manifest_encoding")),
        csv_delimiter=_delimiter(cli.get("csv_delimiter")),
        **merged,
    )
    return settings


def check_cli_keys(cli: Mapping[str, object]) -> None:
    """Refuse a ``cli={...}`` key that is no setting, as the config file refuses one.

    A misspelt key used to be ignored, so ``{"qouta": 80}`` ran without the cap."""
    for name in cli:
        if name in BY_ATTR:
            continue
        near = difflib.get_close_matches(str(name), BY_ATTR, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise ConfigError(
            f"build_settings cli: unknown key {name!r} ({hint}known keys: "
            f"{', '.join(sorted(BY_ATTR))})"
        )


def _workspaces(
    declared: tuple[RawWorkspace, ...],
    base_url: str,
    api_key: ApiKey | None,
    merged: Mapping[str, Any],
    cli: Mapping[str, object],
    env: Mapping[str, str],
    load_key: Callable[[Mapping[str, str], str, str | None], ApiKey] = load_api_key,
) -> tuple[WorkspaceSettings, ...]:
    """The run's workspaces: the declared ones (flags override their values), or one."""
    if not declared:
        assert api_key is not None
        return (WorkspaceSettings(DEFAULT_WORKSPACE, base_url, api_key),)
    out = []
    for w in declared:
        key = load_key(env, w.api_key_env or "", w.api_key_file)
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


def _key_or_missing(env: Mapping[str, str], var: str, key_file: str | None) -> ApiKey:
    """``load_api_key``, or a ``MissingApiKey`` when no key is set at all."""
    try:
        return load_api_key(env, var, key_file)
    except NoApiKey as exc:
        return MissingApiKey(str(exc), var)


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


def resolve_keys(
    attrs: tuple[str, ...],
    *,
    cli: Mapping[str, object],
    env: Mapping[str, str],
    config_path: str | Path | None = None,
) -> dict[str, Any]:
    """Some settings alone, by the precedence and checks of ``build_settings`` but with
    no API key: for the commands that only read or tend the store (status, prune)."""
    path = Path(config_path) if config_path else None
    from_file = load_config_file(path) if path else {}
    out: dict[str, Any] = {}
    for attr in attrs:
        key = BY_ATTR[attr]
        value: object = key.default
        if (key.section, key.name) in from_file:
            value = _coerce(key, from_file[(key.section, key.name)], f"config file {path}")
        if key.env and env.get(key.env):
            value = _coerce(key, env[key.env], f"environment variable {key.env}")
        if cli.get(attr) is not None:
            value = _coerce(key, cli[attr], key.flag or attr)
        out[attr] = value
    return out
