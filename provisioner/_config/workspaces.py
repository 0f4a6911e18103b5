"""Workspaces: each Braze workspace has its own key, base URL, quota and pace.

A config may declare several::

    [[workspaces]]
    name = "us"                       # what the manifest's `workspace` column names
    base_url = "https://rest.iad-01.braze.com"
    api_key_env = "BRAZE_KEY_US"      # or api_key_file = "/run/secrets/us"
    quota = 80                        # optional cap per window (else the run's)
    rate = 20                         # optional requests/s (else the run's)
    default = true                    # rows without a workspace go here (else the first)

Without ``[[workspaces]]`` there is one, named ``default``, made of the run's settings.
Values given on the command line apply to every workspace.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from provisioner.errors import ConfigError

if TYPE_CHECKING:
    from provisioner._config.access import ApiKey

DEFAULT_NAME = "default"
_KEYS = frozenset({"name", "base_url", "api_key_env", "api_key_file", "quota", "rate",
                   "concurrency", "default"})  # fmt: skip
#: Fragments of a key name that would put a secret itself in the config file.
SECRET_WORDS = ("key", "secret", "token", "password", "passwd", "credential", "auth")


def looks_secret(name: str) -> bool:
    """Whether a config key's name suggests it holds a secret (``api_key``, ``token``...).

    Checked only for names that are not known keys, so ``api_key_env``/``api_key_file``
    (which name where the key is) pass."""
    lowered = name.lower()
    return any(word in lowered for word in SECRET_WORDS)


def secret_advice(env_hint: str) -> str:
    """How to pass the key instead of writing it in the config (no value is ever echoed)."""
    return (
        f"would store the API key in a file that gets copied and committed, so it is refused "
        f"(its value is not shown here); put the key in the environment variable {env_hint} "
        f"or in a file (mode 0600) named by api_key_file, and remove this line"
    )


@dataclass(frozen=True, slots=True)
class WorkspaceSettings:
    """One workspace, checked. The key's repr never shows it (``access.ApiKey``)."""

    name: str
    base_url: str
    api_key: ApiKey = field(repr=False)
    quota: int | None = None
    rate: float | None = None
    concurrency: int | None = None


@dataclass(frozen=True, slots=True)
class RawWorkspace:
    """A ``[[workspaces]]`` table before its key is loaded."""

    name: str
    base_url: str | None
    api_key_env: str | None
    api_key_file: str | None
    quota: int | None
    rate: float | None
    concurrency: int | None
    default: bool


def _number(value: object, where: str, kind: type, low: float, high: float) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where} = {value!r} is not a number")
    if kind is int and not isinstance(value, int):
        raise ConfigError(f"{where} = {value!r} is not a whole number")
    if not low <= value <= high:
        raise ConfigError(f"{where} = {value!r} is out of range: allowed {low:g} to {high:g}")
    return value


#: The most [[workspaces]] one run accepts (5,000 took over 1 GB before any request).
MAX_WORKSPACES = 1000


def parse_workspaces(tables: object, path: Path) -> tuple[RawWorkspace, ...]:
    """Check the ``[[workspaces]]`` tables of a config file."""
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"config file {path}: workspaces must be [[workspaces]] tables")
    if len(tables) > MAX_WORKSPACES:
        # Each workspace gets its own client, pool, pacer and queue before the first request.
        raise ConfigError(
            f"config file {path}: {len(tables):,} [[workspaces]] tables, more than the "
            f"{MAX_WORKSPACES:,} a run accepts: split the manifest into several runs"
        )
    seen: set[str] = set()
    out: list[RawWorkspace] = []
    for i, table in enumerate(tables, 1):
        where = f"config file {path}: [[workspaces]] #{i}"
        for name in table:
            if name not in _KEYS and looks_secret(name):
                hint = "that this workspace's api_key_env names"
                raise ConfigError(f"{where}: {name} {secret_advice(hint)}")
            if name not in _KEYS:
                raise ConfigError(
                    f"{where}: unknown key {name} (known: {', '.join(sorted(_KEYS))})"
                )
        name = table.get("name")
        if not isinstance(name, str) or not name or not name.isprintable():
            raise ConfigError(f"{where}: name must be a non-empty string")
        if name in seen:
            raise ConfigError(f"{where}: the name {name!r} is used twice")
        seen.add(name)
        if not table.get("api_key_env") and not table.get("api_key_file"):
            raise ConfigError(f"{where} ({name}): set api_key_env or api_key_file")
        for text_key in ("base_url", "api_key_env", "api_key_file"):
            if text_key in table and not isinstance(table[text_key], str):
                raise ConfigError(f"{where} ({name}): {text_key} must be a string")
        quota = table.get("quota")
        rate = table.get("rate")
        concurrency = table.get("concurrency")
        out.append(
            RawWorkspace(
                name=name,
                base_url=table.get("base_url"),
                api_key_env=table.get("api_key_env"),
                api_key_file=table.get("api_key_file"),
                quota=None if quota is None
                else int(_number(quota, f"{where} ({name}) quota", int, 1, 1e9)),
                rate=None if rate is None
                else float(_number(rate, f"{where} ({name}) rate", float, 0.01, 1e6)),
                concurrency=None if concurrency is None
                else int(_number(concurrency, f"{where} ({name}) concurrency", int, 1, 1024)),
                default=bool(table.get("default", False)),
            )
        )  # fmt: skip
    if sum(w.default for w in out) > 1:
        raise ConfigError(f"config file {path}: more than one workspace has default = true")
    return tuple(out)


def default_name(workspaces: tuple[WorkspaceSettings, ...], raw: tuple[RawWorkspace, ...]) -> str:
    """The workspace rows without a ``workspace`` column go to."""
    for w in raw:
        if w.default:
            return w.name
    return workspaces[0].name if workspaces else DEFAULT_NAME
