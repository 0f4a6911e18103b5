"""The command line's grammar: every subcommand, option and example (``provisioner --help``).

Kept apart from ``main.py`` so that file stays the thin part: settings, the runner, and
errors turned into exit codes. The README's option tables are checked against this
parser by ``tests/unit/test_docs.py``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from provisioner._config.table import FLAGS
from provisioner._core.version import package_version

_RUN_EXAMPLES = """\
examples:
  BRAZE_API_KEY=... provisioner run campaigns.csv --out out/ --config configs/example.toml
  zcat big.jsonl.gz | provisioner run - --format jsonl --out out/ --quota 80
  provisioner run migration.csv --out out/ --derive-send-ids mig2026 --max-wait 0

exit codes: 0 all provisioned, 1 some rows failed, 2 usage/config/manifest/output/state
error (nothing sent, unless the message says how to recover), 3 rows deferred (none
failed), 4 key refused, 75 state store busy, 130/143 interrupted
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's default exit code is 2 as well
        self.print_usage(sys.stderr)
        self.exit(2, f"provisioner: error: {message}\n")


class _VersionAction(argparse.Action):
    """``--version``, reading the installed metadata only when asked (start-up stays lean)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(f"provisioner {package_version()}")  # stdout, as argparse's "version" action
        # Flushed here, so that a closed pipe (`provisioner --version | true`) raises where
        # main() catches it rather than in the interpreter's flush at exit.
        sys.stdout.flush()
        parser.exit()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


#: The settings ``provisioner run`` takes as flags, in --help order (rows of the table in
#: ``provisioner._config.table``: flag, metavar, type, choices and help come from there).
RUN_SETTINGS = (
    "base_url", "concurrency", "rate", "quota", "max_wait", "manifest_format",
    "manifest_encoding", "csv_delimiter", "columns", "state_path", "state_lock_wait",
    "state_keep_days", "state_keep_runs", "state_group", "force", "campaign_check",
    "retry_in_doubt", "derive_send_ids", "metrics_file", "log_format", "log_level",
)  # fmt: skip
#: The settings ``provisioner export`` takes as flags.
EXPORT_SETTINGS = ("state_path", "export_format")
#: The settings ``provisioner prune`` takes as flags.
PRUNE_SETTINGS = ("state_path", "state_keep_days", "state_keep_runs")
VALIDATE_SETTINGS = (
    "state_path",
    "manifest_format",
    "manifest_encoding",
    "csv_delimiter",
    "columns",
    "quota",
    "derive_send_ids",
    "force",
    "retry_in_doubt",
    "campaign_check",
)


def add_setting_flags(
    parser: argparse.ArgumentParser,
    names: tuple[str, ...],
    help_for: dict[str, str] | None = None,
) -> None:
    """One option per setting, as the table describes it (``help_for`` rewords a help line
    for a command where the setting means something narrower)."""
    for name in names:
        key = FLAGS[name]
        assert key.flag is not None, name
        options: dict[str, Any] = {"dest": name, "help": (help_for or {}).get(name, key.flag_help)}
        if key.kind is list:
            options["action"] = "append"  # repeatable; the values arrive as a list
            options["metavar"] = key.metavar
        elif key.kind is bool:
            # A setting on by default has a --no-... flag; unset stays None either way, so
            # build_settings can tell "not given" from "given".
            options["action"] = "store_false" if key.default is True else "store_true"
            options["default"] = None
        else:
            if key.kind is int:
                options["type"] = _positive_int
            elif key.kind is float:
                options["type"] = _number
            if key.choices:
                options["choices"] = key.choices
            if key.metavar:
                options["metavar"] = key.metavar
        parser.add_argument(key.flag, **options)


def build_parser() -> argparse.ArgumentParser:
    """The full parser with every subcommand (the README's option tables match it)."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog="provisioner",
        description="Create Braze send ids from a manifest, concurrently, within the quota.",
        formatter_class=fmt,
    )
    parser.add_argument(
        "--version", action=_VersionAction, help="show program's version number and exit"
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser(
        "run",
        help="provision a manifest",
        epilog=_RUN_EXAMPLES,
        formatter_class=fmt,
        description="Create a send id for every row of MANIFEST.",
    )
    run.add_argument(
        "manifest", metavar="MANIFEST", help="CSV or JSONL file (.gz too), or - for standard input"
    )
    run.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="folder for results.jsonl, failures.jsonl, deferred.csv, summary.json",
    )
    run.add_argument("--config", metavar="FILE", help="TOML config file (see configs/)")
    add_setting_flags(run, RUN_SETTINGS[:-2])
    run.add_argument(
        "--json",
        action="store_true",
        help="print the summary document (summary.json) on stdout at the end",
    )
    run.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="live progress display on stderr (auto: when it is a terminal)",
    )
    add_setting_flags(run, RUN_SETTINGS[-2:])

    sandbox = sub.add_parser(
        "sandbox",
        help="serve a Braze-compatible sandbox on loopback",
        formatter_class=fmt,
        description=(
            "Serve POST /sends/id/create as Braze documents it, with a "
            "quota, rate-limit headers, fault injection, a shared-quota consumer, "
            "outages and a ledger at GET /sandbox/ledger. Prints its URL as the "
            "first line. See docs/sandbox.md."
        ),
        epilog="examples:\n  provisioner sandbox --port 8080 --api-key k1 "
        "--daily-quota 50 --window-seconds 10\n"
        "  provisioner sandbox --daily-quota 10 --window-seconds 2 --shared-consumer 4 "
        "--headers garble --outage 5:3:refuse\n",
    )
    sandbox.add_argument("--host", default="127.0.0.1", help="address to listen on")
    sandbox.add_argument("--port", type=_positive_int, default=0, help="port (0: a free one)")
    sandbox.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        metavar="KEY",
        help="accepted key, one workspace each (repeatable; default: sandbox-key)",
    )
    sandbox.add_argument(
        "--daily-quota",
        type=_positive_int,
        default=100,
        metavar="N",
        help="creations per key per window (default 100)",
    )
    sandbox.add_argument(
        "--window-seconds",
        type=_positive_int,
        default=86400,
        metavar="S",
        help="quota window length (default 86400: a UTC day)",
    )
    sandbox.add_argument(
        "--latency-ms", type=_number, default=0.0, metavar="MS", help="added latency per request"
    )
    sandbox.add_argument(
        "--error-rate", type=_number, default=0.0, metavar="P", help="probability of a random 5xx"
    )
    sandbox.add_argument(
        "--seed", type=_positive_int, default=None, metavar="N", help="seed for random faults"
    )
    sandbox.add_argument(
        "--repeat-counts",
        action="store_true",
        help="a repeated combination counts and is recorded again",
    )
    sandbox.add_argument("--faults", metavar="FILE", help="JSON file of fault rules")
    sandbox.add_argument(
        "--shared-consumer",
        type=_positive_int,
        default=0,
        metavar="N",
        help="another client takes N of each window's quota, per key (default 0: none)",
    )
    sandbox.add_argument(
        "--shared-at",
        type=_number,
        default=0.0,
        metavar="F",
        help="fraction of the window at which it takes them (default 0: at its start)",
    )
    sandbox.add_argument(
        "--shared-span",
        type=_number,
        default=0.0,
        metavar="W",
        help="spread them evenly over this fraction of the window (default 0: all at once)",
    )
    sandbox.add_argument(
        "--headers",
        choices=("normal", "omit", "garble"),
        default=None,
        help="rate-limit headers: normal (default), omit, or garble (see --garble)",
    )
    sandbox.add_argument(
        "--garble",
        action="append",
        choices=("empty", "negative", "past_reset", "text"),
        metavar="VARIANT",
        help="with --headers garble, use only this variant (repeatable; implies "
        "--headers garble; default: all of empty, negative, past_reset, text)",
    )
    sandbox.add_argument(
        "--reset",
        choices=("fixed", "huge", "far", "sliding", "jitter", "backwards"),
        default="fixed",
        help="how X-RateLimit-Reset moves: fixed (default: the window's end), huge (1e30), "
        "far (past year 9999), sliding (now + a window), jitter (+-1 s), backwards "
        "(1 s earlier per creation); the quota counted stays the real window's",
    )
    sandbox.add_argument(
        "--outage",
        action="append",
        dest="outages",
        metavar="START:DURATION[:MODE]",
        help="seconds after start, for how long; MODE 5xx (default: every create gets 503) "
        "or refuse (connections reset); repeatable",
    )
    sandbox.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="serve https with this PEM certificate (chain); needs --tls-key",
    )
    sandbox.add_argument(
        "--tls-key", metavar="FILE", help="the PEM private key of --tls-cert (unencrypted)"
    )
    sandbox.add_argument(
        "--campaigns",
        metavar="FILE",
        help="campaign ids, one a line ('ID,not_api': exists, not an API campaign): "
        "serves GET /campaigns/list and answers 400 for other ids (default: accept all)",
    )
    sandbox.add_argument(
        "--invalid-counts",
        action="store_true",
        help="with --campaigns, a 400 for an invalid campaign spends quota (worst case)",
    )
    sandbox.add_argument(
        "--key-without-campaigns-list",
        action="append",
        dest="keys_without_campaigns_list",
        metavar="KEY",
        help="this --api-key lacks the campaigns.list permission (403); repeatable",
    )
    export = sub.add_parser(
        "export",
        help="write a run's output files again from the state store",
        formatter_class=fmt,
        description="Write results.jsonl, failures.jsonl, deferred.csv and summary.json of "
        "RUN_ID again, from the state store; with --format csv, results.csv instead: every "
        "row with its status, for a spreadsheet (a report, not a manifest).",
        epilog="examples:\n  provisioner export --run 20261126T061500Z-3f9a1c --out again/\n"
        "  provisioner export --run 20261126T061500Z-3f9a1c --out report/ --format csv\n",
    )
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--run",
        metavar="RUN_ID",
        dest="run_id",
        help="the run id (see `provisioner status`)",
    )
    which.add_argument(
        "--group",
        metavar="NAME",
        help="the whole group of cooperating workers NAME (run --group), once every chunk is done",
    )
    export.add_argument("--out", required=True, metavar="DIR", help="folder to write to")
    add_setting_flags(export, EXPORT_SETTINGS)
    export.add_argument("--config", metavar="FILE", help="TOML config file (its [state] path)")

    validate = sub.add_parser(
        "validate",
        help="forecast a run: invalid rows, duplicates, already done, windows needed",
        formatter_class=fmt,
        description="Read MANIFEST and the state store and report, without sending anything: "
        "rows, invalid rows (with the first reasons), duplicates, rows already provisioned, "
        "rows to send, and per workspace how many quota windows the rest needs. Exit 0 when "
        "the manifest is clean, 1 when it has invalid rows, 2 on a manifest error.",
        epilog="example:\n  provisioner validate campaigns.csv --config prod.toml\n",
    )
    validate.add_argument("manifest", metavar="MANIFEST", help="CSV or JSONL file, or -")
    validate.add_argument("--config", metavar="FILE", help="TOML config file")
    add_setting_flags(
        validate,
        VALIDATE_SETTINGS,
        help_for={
            "quota": "cap on creations per quota window, as for run",
            "derive_send_ids": "as for run: derived send ids change which rows are done",
            "force": "as for run: rows created earlier count as to send",
            "retry_in_doubt": "as for run: rows in doubt count as to send",
            "campaign_check": "do not list the campaigns (GET /campaigns/list) even when a key "
            "is present",
        },
    )
    validate.add_argument(
        "--by",
        metavar="DATE",
        help="a deadline (YYYY-MM-DD = 00:00 UTC that day, or an ISO 8601 time): also say "
        "the quota per day needed to finish by then",
    )
    validate.add_argument("--json", action="store_true", help="print the report as JSON")

    prune = sub.add_parser(
        "prune",
        help="remove old runs' outcomes by the retention policy",
        formatter_class=fmt,
        description="Remove the outcomes of runs older than keep_days beyond the last "
        "keep_runs (what a run does by itself at its end), then give the space back. "
        "Created combinations, rows in doubt and the runs' records are always kept. "
        "Takes the store's run lock on SQLite (exit 75 while a run holds it).",
        epilog="examples:\n  provisioner prune --dry-run\n  provisioner prune --keep-days 7 "
        "--keep-runs 3 --state /var/lib/provisioner/state.sqlite3\n",
    )
    add_setting_flags(prune, PRUNE_SETTINGS)
    prune.add_argument(
        "--config", metavar="FILE", help="TOML config file (its [state] path and retention)"
    )
    prune.add_argument(
        "--dry-run", action="store_true", help="say what would be removed; remove nothing"
    )
    prune.add_argument(
        "--vacuum",
        action="store_true",
        help="switch a store made by an older version to incremental vacuum, once: a full "
        "rewrite that needs about twice its used size free (later prunes shrink the file "
        "in small steps)",
    )
    prune.add_argument("--json", action="store_true", help="print what was removed as JSON")

    status = sub.add_parser(
        "status",
        help="recent runs, quota used, rows deferred or in doubt",
        formatter_class=fmt,
        description="Show recent runs with their counts and exit codes, the quota used in "
        "the current window per workspace, and rows deferred or in doubt.",
        epilog="examples:\n  provisioner status\n  provisioner status --state "
        "/var/lib/provisioner/state.sqlite3 --json\n",
    )
    add_setting_flags(status, ("state_path",))
    status.add_argument("--config", metavar="FILE", help="TOML config file (its [state] path)")
    status.add_argument(
        "--group", metavar="NAME", help="also the progress of group NAME per worker (run --group)"
    )
    status.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_state(sub, fmt)
    return parser


def _add_state(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    """``provisioner state copy``: a store's contents into another, empty, store."""
    state = sub.add_parser(
        "state",
        help="work on a state store as a whole (copy)",
        formatter_class=fmt,
        description="Commands on a state store as a whole.",
    )
    verbs = state.add_subparsers(dest="state_command", required=True, parser_class=_Parser)
    copy = verbs.add_parser(
        "copy",
        help="copy a store into an empty one (SQLite to PostgreSQL and back)",
        formatter_class=fmt,
        description="Copy everything the store --from holds (runs, created combinations, "
        "intents in flight or in doubt, outcomes, quota windows) into the store --to, "
        "which must hold nothing. Both stores are locked while they are copied (a run "
        "holding either: exit 75). Exit 0 when copied, 2 when --to is not empty.",
        epilog="examples:\n  provisioner state copy --from ~/.local/state/provisioner/"
        "state.sqlite3 --to postgresql://provisioner@db:5432/ops\n"
        "  provisioner state copy --from postgresql://provisioner@db/ops --to backup.sqlite3\n",
    )
    copy.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="FILE_OR_URL",
        help="the store to copy: a SQLite file or a postgresql:// URL",
    )
    copy.add_argument(
        "--to",
        dest="target",
        required=True,
        metavar="FILE_OR_URL",
        help="the empty store to copy into (a new file is created)",
    )
    add_setting_flags(copy, ("state_lock_wait",))
