"""The API key and where it may go: where the key comes from (the environment or a key
file, never the config file), and the base URL and CA bundle its requests may use.

Every message here is written so that it cannot contain the key: not the value, not a
setting where it may have been pasted by mistake, not a URL's credentials or query.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import quote, quote_plus, unquote, urlsplit

from provisioner._core.identity import workspace_label
from provisioner.errors import ConfigError

DEFAULT_BASE_URL = "https://rest.iad-01.braze.com"
DEFAULT_KEY_ENV = "BRAZE_API_KEY"


REDACTED = "<redacted>"
# A form shorter than this would redact ordinary words of a message; no real key is.
_MIN_FORM = 6


def _unchanged(text: str) -> str:
    return text


def _key_forms(key: str) -> set[str]:
    """The strings that hold the key: itself and its encodings (for base64, the part of
    the encoding that depends on the key's bytes alone, at each alignment)."""
    raw = key.encode()
    found = {key, quote(key, safe=""), quote_plus(key), raw.hex(), raw.hex().upper()}
    for pad in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(b"\x00" * pad + raw).decode()
            found.add(text[4 if pad else 0 : -4])
    return {form for form in found if len(form) >= _MIN_FORM}


class ApiKey:
    """The REST API key. Its repr and str never show it: only ``reveal()`` does, and only
    the client calls that, to build the Authorization header."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The key itself, for the Authorization header and nothing else."""
        return self._value

    def redactor(self) -> Callable[[str], str]:
        """A function that replaces the key, in every form a server could echo it (raw, so
        also ``Bearer <key>``; URL-encoded; hex; base64 and URL-safe base64 at each of the
        three alignments), with ``<redacted>``. For text taken from a response."""
        forms = sorted(_key_forms(self._value), key=len, reverse=True)  # longest first
        if not forms:
            return _unchanged

        def redact(text: str) -> str:
            for form in forms:
                if form in text:
                    text = text.replace(form, REDACTED)
            return text

        return redact

    @property
    def label(self) -> str:
        """A name for the workspace that does not reveal the key (same as the sandbox's)."""
        return workspace_label(self._value)

    @property
    def present(self) -> bool:
        """False for ``MissingApiKey``, the stand-in ``validate`` runs with."""
        return True

    def __repr__(self) -> str:
        return "ApiKey(<redacted>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ApiKey) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class NoApiKey(ConfigError):
    """No key in the variable nor in a key file (``validate`` goes on without one)."""


class MissingApiKey(ApiKey):
    """The stand-in for a key that is not set, for ``validate``, which lints a manifest
    without one (in CI, say). It has no label (the store's rows and quota windows are
    filed under the key's hash, so none of them can be found) and cannot be revealed:
    anything that would send it raises the missing key's ConfigError instead."""

    __slots__ = ("advice", "variable")

    def __init__(self, advice: str, variable: str) -> None:
        super().__init__("")
        self.advice = advice  # the "no API key: set ..." message, naming the variable
        self.variable = variable  # the environment variable that would hold it

    def reveal(self) -> str:
        """Never a key: raises the ConfigError that loading it raised."""
        raise NoApiKey(self.advice)

    @property
    def label(self) -> str:
        """No hash to show: the workspace is not known to the store under this."""
        return "no-api-key"

    @property
    def present(self) -> bool:
        """Always False."""
        return False

    def __repr__(self) -> str:
        return "MissingApiKey()"

    __str__ = __repr__


def _shown_url(url: str) -> str:
    """The URL for a message: scheme, host and port only. Credentials, the path, the query
    and the fragment are never shown (a key pasted in any of them would be echoed)."""
    parts = urlsplit(url)
    hidden = [
        what
        for what, present in (
            ("credentials", parts.username or parts.password),
            ("path", parts.path.strip("/")),
            ("query", parts.query or parts.fragment),
        )
        if present
    ]
    if not hidden:
        return repr(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return repr(f"{parts.scheme}://{host}{port}") + f" ({'/'.join(hidden)} not shown)"


def check_key_not_in_url(url: str, key: ApiKey, name: str = "base_url") -> None:
    """Refuse a base URL that holds the API key (pasted into its path, say): it would be
    in every error message and log naming the URL. The URL is not echoed."""
    if not key.present:
        return
    value = key.reveal()
    if len(value) < 8:  # too short to tell a pasted key from a word of the URL
        return
    if value in url or value in unquote(url):
        raise ConfigError(
            f"{name} {_shown_url(url)} holds the API key: remove it from the URL; the key "
            f"goes in {DEFAULT_KEY_ENV} (or the variable api_key_env names), never in the URL"
        )


def check_base_url(url: str) -> str:
    """The base URL must be https, except for loopback hosts (the sandbox)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (a bad port raises here, not later)
    except ValueError:
        raise ConfigError(
            f"base URL {_shown_url_safe(url)} is not a valid URL: use your instance's REST "
            f"endpoint, e.g. {DEFAULT_BASE_URL}"
        ) from None
    host = parts.hostname or ""
    shown = _shown_url(url)
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError(
            f"base URL {shown} is not an http(s) URL: use your instance's REST endpoint, "
            f"e.g. {DEFAULT_BASE_URL}"
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(
            f"base URL {shown} must not carry credentials, a query or a fragment: the key "
            f"goes in {DEFAULT_KEY_ENV}, never in the URL"
        )
    if parts.scheme == "http" and not is_loopback(host):
        raise ConfigError(
            f"base URL {shown} uses plain http to a non-loopback host; the API key would travel "
            f"in clear text: use https (plain http is allowed only for 127.0.0.1/localhost)"
        )
    return url.rstrip("/")


def _shown_url_safe(url: str) -> str:
    """A URL urlsplit cannot parse, shown only up to its host part's start."""
    scheme, sep, _ = url.partition("://")
    return repr(f"{scheme}{sep}...") if sep else "(not shown)"


def check_ca_file(path: str) -> str:
    """A CA bundle must be a readable PEM file of certificates (checked before any request,
    so a typo stops the run at once rather than at the first handshake)."""
    import ssl  # ~12 ms: not for `provisioner --help`, which imports this module

    try:
        ssl.create_default_context().load_verify_locations(cafile=path)
    except FileNotFoundError:
        raise ConfigError(
            f"ca_file {path} does not exist: give the path of a PEM CA bundle"
        ) from None
    except (ssl.SSLError, ValueError):  # before OSError: SSLError is one
        raise ConfigError(
            f"ca_file {path} holds no PEM certificate: give a file of "
            f"-----BEGIN CERTIFICATE----- blocks (the CA that signed the server's certificate)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"ca_file {path} cannot be read: {exc.strerror or exc}") from None
    return path


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses."""
    if host == "localhost":
        return True
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _shown_path(path: str) -> str:
    """A key file's path for a message, unless it could be the key pasted in its place.

    A path with a folder or a suffix (``/run/secrets/braze``, ``key.txt``) is shown; a
    bare word is not, because a key pasted into api_key_file looks exactly like one."""
    if "/" in path or "." in path:
        return f"key file {path}"
    return "the key file named by api_key_file (not shown: without a folder it could be the key)"


def load_api_key(env: Mapping[str, str], var: str, key_file: str | None) -> ApiKey:
    """The key from the named environment variable, else from the key file.

    No message ever contains the key, nor a setting where it may have been pasted by
    mistake (an api_key_env that is no variable name, a bare-word api_key_file)."""
    if var and not _ENV_NAME.fullmatch(var):  # "" is a workspace with a key file only
        raise ConfigError(
            "api_key_env must be the NAME of an environment variable (letters, digits and _), "
            "e.g. BRAZE_API_KEY; the value given is not one and is not shown, in case it is "
            "the key itself: put the key in that variable, not in the config"
        )
    # Stripped like a key file: `kubectl create secret --from-file` and `$(cat key)` in
    # some shells leave the file's trailing newline in the variable.
    value = env.get(var, "").strip()
    origin = f"environment variable {var}"
    if not value and key_file:
        origin = _shown_path(key_file)
        try:
            value = Path(key_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"{origin} cannot be read: {exc.strerror}; check api_key_file "
                f"(or PROVISIONER_API_KEY_FILE), or set {var}"
            ) from None
        except UnicodeDecodeError:
            raise ConfigError(f"{origin} is not UTF-8 text") from None
    if not value:
        raise NoApiKey(
            f"no API key: set {var} (or name a key file with api_key_file in the config); "
            f"the key needs the sends.id.create permission"
        )
    if any(not (0x21 <= ord(c) <= 0x7E) for c in value):
        # Never echo the value: say only what is wrong with it.
        raise ConfigError(
            f"the API key from {origin} contains spaces, control or non-ASCII characters; "
            f"copy it again from the Braze dashboard"
        )
    return ApiKey(value)
