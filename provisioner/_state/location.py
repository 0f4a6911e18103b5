"""Where a state store is and how it may be shown: the default path, a --state value
read as a file or a PostgreSQL URL, the URL without its password; and the settings a run
records, with anything secret-looking left out."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def default_state_path() -> Path:
    """$XDG_STATE_HOME/provisioner/state.sqlite3, else ~/.local/state/provisioner/state.sqlite3."""
    base = os.environ.get("XDG_STATE_HOME", "")
    # The XDG spec says relative values are invalid and must be ignored.
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "state"
    return root / "provisioner" / "state.sqlite3"


#: Name fragments of settings never stored in runs.settings. Callers must not pass the
#: API key at all: this filter is a second line of defence, not a licence.
SECRET_WORDS = ("key", "secret", "token", "password")


def scrub_settings(settings: Mapping[str, object]) -> dict[str, object]:
    """A copy of ``settings`` without any entry (at any depth) whose name looks secret."""
    kept: dict[str, object] = {}
    for name, value in settings.items():
        if any(word in str(name).lower() for word in SECRET_WORDS):
            continue
        kept[str(name)] = scrub_settings(value) if isinstance(value, Mapping) else value
    return kept


def state_location(value: str | None) -> Path | str:
    """Where a --state value points: a PostgreSQL URL as it is, else a file path
    (``~`` expanded; None: :func:`default_state_path`)."""
    if value and value.lower().startswith(("postgresql://", "postgres://")):
        return value
    return Path(value).expanduser() if value else default_state_path()


def show_location(location: Path | str) -> str:
    """A location as messages may show it (a URL without its password)."""
    if isinstance(location, str):
        from provisioner._state.postgres_schema import redact_url

        return redact_url(location)
    return str(location)
