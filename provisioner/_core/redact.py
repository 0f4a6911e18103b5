"""The one function that makes a database URL safe to show: without its password.

In ``_core`` because settings (``Settings.public``, stored in summaries and the state
store) and the PostgreSQL store both need it.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit


def redact_url(url: str) -> str:
    """``url`` without its password (netloc and ``password=`` parameter): the only form
    of a database URL the tool ever shows, logs or stores."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            netloc = f"{userinfo.partition(':')[0]}@{hostport}"
        query = [(k, v) for k, v in parse_qsl(parts.query) if k.lower() != "password"]
        return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), ""))
    except ValueError:
        return "postgresql://(unparsable URL)"
