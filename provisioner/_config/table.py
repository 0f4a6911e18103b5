"""The settings table: every setting's name, type, default, range, variable, flag and help.

One row per setting, written once. ``Settings`` (its defaults), ``build_settings`` (the
precedence and the checks), the config file's known keys and ``provisioner run``'s options
(``provisioner._cli.args``) all read this table, so a flag, a config key and a Python
``cli={...}`` key cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from provisioner._config.access import DEFAULT_BASE_URL, DEFAULT_KEY_ENV


@dataclass(frozen=True, slots=True)
class Key:
    """One setting: where it lives in the file, its environment variable, type and range,
    and the command-line flag that sets it (``flag_help`` is that flag's help line)."""

    section: str  # "" for a setting that only a flag (or ``cli={...}``) gives
    name: str
    kind: type
    default: object
    env: str | None = None
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    doc: str = ""
    flag: str | None = None
    metavar: str | None = None
    flag_help: str | None = None
    settable: bool = True  # False: read by build_settings, not a ``Settings`` field

    @property
    def attr(self) -> str | None:
        """The ``Settings`` field (and the ``cli={...}`` key): run/braze keys keep their name,
        other sections are prefixed (``retry.attempts`` -> ``retry_attempts``)."""
        if not self.settable:
            return None
        if self.section in ("", "braze", "run"):
            return self.name
        return f"{self.section}_{self.name}"


_STATE_HELP = "state store (default $XDG_STATE_HOME/provisioner/state.sqlite3)"

# One row per setting: section, name, type, default, environment variable, range,
# choices, documentation, then the flag. Laid out as a table on purpose.
# fmt: off
KEYS: tuple[Key, ...] = (
    Key("braze", "base_url", str, DEFAULT_BASE_URL, "PROVISIONER_BASE_URL",
        doc="REST endpoint of your Braze instance (https; http only for loopback)",
        flag="--base-url", metavar="URL", flag_help="Braze REST endpoint of your instance"),
    Key("braze", "api_key_env", str, DEFAULT_KEY_ENV, None, settable=False,
        doc="name of the environment variable that holds the REST API key"),
    Key("braze", "api_key_file", str, None, "PROVISIONER_API_KEY_FILE", settable=False,
        doc="file holding the REST API key (used when the variable is unset)"),
    Key("braze", "ca_file", str, None, "PROVISIONER_CA_FILE",
        doc="PEM CA bundle trusted for https in addition to the system's (e.g. a proxy's CA)"),
    Key("run", "concurrency", int, 16, "PROVISIONER_CONCURRENCY", 1, 1024,
        doc="requests in flight at once",
        flag="--concurrency", metavar="N", flag_help="requests in flight at once (default 16)"),
    Key("run", "rate", float, 50.0, "PROVISIONER_RATE", 0.01, 1_000_000,
        doc="requests per second, paced evenly",
        flag="--rate", metavar="R", flag_help="requests per second, paced evenly (default 50)"),
    Key("run", "quota", int, None, "PROVISIONER_QUOTA", 1, 1_000_000_000,
        doc="cap on creations per quota window, below the server's limit",
        flag="--quota", metavar="N",
        flag_help="cap on creations per quota window, below the server's limit"),
    Key("run", "pace", str, "asap", "PROVISIONER_PACE", choices=("asap", "even"),
        doc="asap: as fast as rate and quota allow; even: spread the quota over the window"),
    Key("run", "pace_span", float, None, None, 1, 31_622_400,
        doc="with pace = even: spread over this many seconds (default: until the reset)"),
    Key("run", "max_wait", float, 300.0, "PROVISIONER_MAX_WAIT", 0, 604800,
        doc="longest pause for a rate-limit reset before deferring the rest (seconds)",
        flag="--max-wait", metavar="S",
        flag_help="longest pause for a quota reset before deferring (default 300)"),
    Key("run", "default_quota", int, 100, None, 1, 1_000_000_000,
        doc="quota assumed before the server's headers say otherwise"),
    Key("run", "default_window", int, 86400, None, 1, 31_622_400,
        doc="quota window assumed before the server's headers say otherwise (seconds)"),
    Key("run", "connect_timeout", float, 5.0, "PROVISIONER_CONNECT_TIMEOUT", 0.05, 300,
        doc="seconds to open a connection"),
    Key("run", "read_timeout", float, 30.0, "PROVISIONER_READ_TIMEOUT", 0.05, 600,
        doc="seconds to wait for a response once the request is sent"),
    Key("run", "request_timeout", float, 60.0, "PROVISIONER_REQUEST_TIMEOUT", 0.05, 3600,
        doc="seconds one request may take in all, connecting to the last byte of the answer"),
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
        doc="give rows without a send_id a deterministic one with this prefix",
        flag="--derive-send-ids", metavar="PREFIX",
        flag_help="give rows without a send_id a stable one: nothing is ever in doubt"),
    Key("run", "metrics_file", str, None, "PROVISIONER_METRICS_FILE",
        doc="Prometheus textfile to write during and after the run",
        flag="--metrics-file", metavar="PATH",
        flag_help="write Prometheus metrics here (node_exporter textfile collector)"),
    Key("run", "max_row_bytes", int, 1_048_576, "PROVISIONER_MAX_ROW_BYTES", 1024, 67_108_864,
        doc="a manifest record longer than this (bytes) fails as line_too_long, unparsed"),
    Key("state", "path", str, None, "PROVISIONER_STATE",
        doc="state store file or postgresql:// URL"
            " (default: $XDG_STATE_HOME/provisioner/state.sqlite3)",
        flag="--state", metavar="PATH", flag_help=_STATE_HELP),
    Key("state", "lock_wait", float, 0.0, "PROVISIONER_LOCK_WAIT", 0, 86400,
        doc="seconds a run waits for the store's lock (PostgreSQL: a workspace's lease) that"
            " another run holds, before exiting 75 (default 0: at once)",
        flag="--lock-wait", metavar="S",
        flag_help="wait up to S seconds for a store another run holds (default 0: exit 75)"),
    Key("state", "keep_days", float, 30.0, "PROVISIONER_KEEP_DAYS", 0, 36_500,
        doc="retention: runs older than this many days, beyond the last keep_runs, lose"
            " their outcomes at the end of each run (0: retention off, nothing is pruned)",
        flag="--keep-days", metavar="DAYS",
        flag_help="prune runs older than DAYS beyond the last --keep-runs (default 30; 0: off)"),
    Key("state", "keep_runs", int, 10, "PROVISIONER_KEEP_RUNS", 0, 1_000_000,
        doc="retention: the last this many runs are never pruned, however old",
        flag="--keep-runs", metavar="N",
        flag_help="never prune the last N runs (default 10)"),
    Key("state", "url", str, None, None, settable=False,
        doc="a postgresql:// URL for the state store (the same as path; give one of them)"),
    Key("state", "group", str, None, "PROVISIONER_GROUP",
        doc="work as one of several cooperating workers of this group on a PostgreSQL store"
            " (same manifest everywhere; each handles the chunks it claims)",
        flag="--group", metavar="NAME",
        flag_help="cooperate with the other workers of group NAME (PostgreSQL --state): "
        "split the manifest and share the quota"),
    Key("state", "group_chunk", int, 500, None, 1, 10_000_000,
        doc="manifest lines per chunk when a worker creates a group (later workers use the"
            " group's)"),
    Key("log", "format", str, None, "PROVISIONER_LOG_FORMAT", choices=("json", "console"),
        doc="log format (default: console on a terminal, json otherwise)",
        flag="--log-format",
        flag_help="log format (default: console on a terminal, json otherwise)"),
    Key("log", "level", str, "info", "PROVISIONER_LOG_LEVEL",
        choices=("debug", "info", "warning", "error"), doc="log level",
        flag="--log-level", flag_help="log level (default info)"),
)

#: Settings only a flag (or ``build_settings(cli={...})``) gives: no config key, no variable.
FLAG_ONLY: tuple[Key, ...] = (
    Key("", "manifest_format", str, None, choices=("csv", "jsonl"),
        doc="manifest format (default: from the file name)",
        flag="--format", flag_help="manifest format (default: from the file name)"),
    Key("", "force", bool, False,
        doc="send rows that earlier runs created again (spends quota)",
        flag="--force", flag_help="send rows that earlier runs created again (spends quota)"),
    Key("", "retry_in_doubt", bool, False,
        doc="send rows that are in doubt again (may create a second send id)",
        flag="--retry-in-doubt",
        flag_help="send rows that are in doubt again (may create a second send id)"),
    Key("", "manifest_encoding", str, None,
        doc="the manifest's encoding when it is not UTF-8 (default: UTF-8, checked)",
        flag="--encoding", metavar="NAME",
        flag_help="the manifest's encoding when it is not UTF-8 (e.g. cp1252)"),
    Key("", "csv_delimiter", str, ",",
        doc="CSV field separator", flag="--delimiter", metavar="CHAR",
        flag_help="CSV field separator (default ','; 'tab' for a tab)"),
    Key("", "columns", list, (),
        doc="read a known column from another header (NAME=HEADER; [manifest] columns)",
        flag="--column", metavar="NAME=HEADER",
        flag_help="read column NAME (campaign_id, send_id, workspace) from HEADER (repeatable)"),
    Key("", "campaign_check", bool, True,
        doc="list each workspace's campaigns first (GET /campaigns/list) and refuse rows for "
        "unknown or non-API campaigns before they spend quota",
        flag="--no-campaign-check",
        flag_help="do not list the workspace's campaigns first (GET /campaigns/list) to refuse "
        "rows for unknown or non-API campaigns before they spend quota"),
)

#: Flags of the commands that read the store (``export``), not of a run: no config key, no
#: variable, no ``Settings`` field and no ``cli={...}`` key; the argparse dest is the name.
COMMAND_ONLY: tuple[Key, ...] = (
    Key("", "export_format", str, "files", choices=("files", "csv"),
        doc="what export writes: the run's four output files, or results.csv, one row per "
        "manifest row for a spreadsheet (a report, not a manifest: never feed it back)",
        flag="--format",
        flag_help="files: the run's four output files (default); csv: results.csv for "
        "spreadsheets, every row with its status, cells neutralised against formulas"),
)
# fmt: on

KEYS_BY_NAME = {(k.section, k.name): k for k in KEYS}
#: ``cli={...}`` key -> its row: every key ``build_settings`` accepts from a caller.
BY_ATTR: dict[str, Key] = {k.attr: k for k in (*KEYS, *FLAG_ONLY) if k.attr is not None}
#: Every flag the table defines, by its argparse dest: ``BY_ATTR`` and ``COMMAND_ONLY``.
FLAGS: dict[str, Key] = {**BY_ATTR, **{k.name: k for k in COMMAND_ONLY}}


def default(attr: str) -> Any:
    """The table's default for a ``Settings`` field (so the dataclass states none itself)."""
    return BY_ATTR[attr].default
