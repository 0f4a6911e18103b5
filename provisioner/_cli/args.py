"""The command line's grammar: every subcommand, option and example (``provisioner --help``).

Kept apart from ``cli.py`` so that file stays the thin part: settings, the runner, and
errors turned into exit codes. The README's option tables are checked against this
parser by ``tests/unit/test_docs.py``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from provisioner import __version__

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


def build_parser() -> argparse.ArgumentParser:
    """The full parser with every subcommand (the README's option tables match it)."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog="provisioner",
        description="Create Braze send ids from a manifest, concurrently, within the quota.",
        formatter_class=fmt,
    )
    parser.add_argument("--version", action="version", version=f"provisioner {__version__}")
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
    run.add_argument("--base-url", metavar="URL", help="Braze REST endpoint of your instance")
    run.add_argument(
        "--concurrency",
        type=_positive_int,
        metavar="N",
        help="requests in flight at once (default 16)",
    )
    run.add_argument(
        "--rate", type=_number, metavar="R", help="requests per second, paced evenly (default 50)"
    )
    run.add_argument(
        "--quota",
        type=_positive_int,
        metavar="N",
        help="cap on creations per quota window, below the server's limit",
    )
    run.add_argument(
        "--max-wait",
        type=_number,
        metavar="S",
        help="longest pause for a quota reset before deferring (default 300)",
    )
    run.add_argument(
        "--format",
        choices=("csv", "jsonl"),
        dest="manifest_format",
        help="manifest format (default: from the file name)",
    )
    run.add_argument(
        "--encoding",
        dest="manifest_encoding",
        metavar="NAME",
        help="the manifest's encoding when it is not UTF-8 (e.g. cp1252)",
    )
    run.add_argument(
        "--delimiter",
        dest="csv_delimiter",
        metavar="CHAR",
        help="CSV field separator (default ','; 'tab' for a tab)",
    )
    run.add_argument(
        "--column",
        action="append",
        dest="columns",
        metavar="NAME=HEADER",
        help="read column NAME (campaign_id, send_id, workspace) from HEADER (repeatable)",
    )
    run.add_argument(
        "--state",
        metavar="PATH",
        dest="state_path",
        help="state store (default $XDG_STATE_HOME/provisioner/state.sqlite3)",
    )
    run.add_argument(
        "--force",
        action="store_true",
        help="send rows that earlier runs created again (spends quota)",
    )
    run.add_argument(
        "--retry-in-doubt",
        action="store_true",
        help="send rows that are in doubt again (may create a second send id)",
    )
    run.add_argument(
        "--derive-send-ids",
        metavar="PREFIX",
        help="give rows without a send_id a stable one: nothing is ever in doubt",
    )
    run.add_argument(
        "--metrics-file",
        metavar="PATH",
        help="write Prometheus metrics here (node_exporter textfile collector)",
    )
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
    _log_options(run)

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
    export = sub.add_parser(
        "export",
        help="write a run's output files again from the state store",
        formatter_class=fmt,
        description="Write results.jsonl, failures.jsonl, deferred.csv and summary.json of "
        "RUN_ID again, from the state store.",
        epilog="example:\n  provisioner export --run 20261126T061500Z-3f9a1c --out again/\n",
    )
    export.add_argument(
        "--run",
        required=True,
        metavar="RUN_ID",
        dest="run_id",
        help="the run id (see `provisioner status`)",
    )
    export.add_argument("--out", required=True, metavar="DIR", help="folder to write to")
    export.add_argument("--config", metavar="FILE", help="TOML config file (its [state] path)")
    export.add_argument(
        "--state",
        metavar="PATH",
        dest="state_path",
        help="state store (default $XDG_STATE_HOME/provisioner/state.sqlite3)",
    )

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
    validate.add_argument(
        "--state",
        metavar="PATH",
        dest="state_path",
        help="state store (default $XDG_STATE_HOME/provisioner/state.sqlite3)",
    )
    validate.add_argument(
        "--format",
        choices=("csv", "jsonl"),
        dest="manifest_format",
        help="manifest format (default: from the file name)",
    )
    validate.add_argument(
        "--encoding",
        dest="manifest_encoding",
        metavar="NAME",
        help="the manifest's encoding when it is not UTF-8 (e.g. cp1252)",
    )
    validate.add_argument(
        "--delimiter",
        dest="csv_delimiter",
        metavar="CHAR",
        help="CSV field separator (default ','; 'tab' for a tab)",
    )
    validate.add_argument(
        "--column",
        action="append",
        dest="columns",
        metavar="NAME=HEADER",
        help="read column NAME (campaign_id, send_id, workspace) from HEADER (repeatable)",
    )
    validate.add_argument(
        "--quota",
        type=_positive_int,
        metavar="N",
        help="cap on creations per quota window, as for run",
    )
    validate.add_argument(
        "--derive-send-ids",
        metavar="PREFIX",
        help="as for run: derived send ids change which rows are done",
    )
    validate.add_argument("--json", action="store_true", help="print the report as JSON")

    status = sub.add_parser(
        "status",
        help="recent runs, quota used, rows deferred or in doubt",
        formatter_class=fmt,
        description="Show recent runs with their counts and exit codes, the quota used in "
        "the current window per workspace, and rows deferred or in doubt.",
        epilog="examples:\n  provisioner status\n  provisioner status --state "
        "/var/lib/provisioner/state.sqlite3 --json\n",
    )
    status.add_argument(
        "--state",
        metavar="PATH",
        dest="state_path",
        help="state store (default $XDG_STATE_HOME/provisioner/state.sqlite3)",
    )
    status.add_argument("--config", metavar="FILE", help="TOML config file (its [state] path)")
    status.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def _log_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-format",
        choices=("json", "console"),
        help="log format (default: console on a terminal, json otherwise)",
    )
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        help="log level (default info)",
    )
