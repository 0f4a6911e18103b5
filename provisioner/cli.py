"""Command line: parse arguments into settings, call the runner, map errors to exit codes.

Exit codes (a public contract, see the README): 0 every row provisioned; 1 some rows
failed; 2 usage, config, manifest, output or state error (nothing sent); 3 rows deferred
and none failed; 4 aborted because the key was refused; 75 another run holds the state
store; 130/143 interrupted by SIGINT/SIGTERM after in-flight requests finished and the
outputs were written.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from . import __version__, logs
from .config import build_settings
from .errors import ProvisionerError, StateError

if TYPE_CHECKING:
    from .observe import RunObserver
    from .state import SqliteStateStore

T = TypeVar("T")

_RUN_EXAMPLES = """\
examples:
  BRAZE_API_KEY=... provisioner run campaigns.csv --out out/ --config configs/example.toml
  zcat big.jsonl.gz | provisioner run - --format jsonl --out out/ --quota 80
  provisioner run migration.csv --out out/ --derive-send-ids mig2026 --max-wait 0

exit codes: 0 all provisioned, 1 some rows failed, 2 usage/config/manifest error (nothing
sent), 3 rows deferred (none failed), 4 key refused, 75 state store busy, 130/143 interrupted
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
    export.add_argument(
        "--state",
        metavar="PATH",
        dest="state_path",
        help="state store (default $XDG_STATE_HOME/provisioner/state.sqlite3)",
    )

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


def _asyncio_run(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when the optional extra is installed, else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def _cmd_run(args: argparse.Namespace) -> int:
    from .api import run_pipeline
    from .report import human_summary

    cli = {
        k: getattr(args, k, None)
        for k in (
            "base_url",
            "concurrency",
            "rate",
            "quota",
            "max_wait",
            "log_format",
            "log_level",
            "state_path",
            "derive_send_ids",
            "manifest_format",
            "force",
            "retry_in_doubt",
            "metrics_file",
        )
    }
    settings = build_settings(
        manifest=args.manifest, out_dir=args.out, cli=cli, env=os.environ, config_path=args.config
    )
    logs.configure(settings.log_format, settings.log_level)
    observers: list[RunObserver] = []
    if args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty()):
        from .display import TerminalDisplay

        observers.append(TerminalDisplay())
    result = _asyncio_run(run_pipeline(settings, handle_signals=True, observers=observers))
    print(human_summary(result.summary, settings.out_dir), file=sys.stderr)
    return result.exit_code


def _cmd_sandbox(args: argparse.Namespace) -> int:
    from .errors import UsageError
    from .sandbox import SandboxConfig, load_faults, serve
    from .sandbox_modes import parse_outage

    outages = []
    for text in args.outages or ():
        try:
            outages.append(parse_outage(text))
        except ValueError as exc:
            raise UsageError(f"--outage: {exc}") from None
    # --garble alone is a request for garbled headers: no need to say --headers too.
    headers = args.headers or ("garble" if args.garble else "normal")
    config = SandboxConfig(
        host=args.host,
        port=args.port,
        api_keys=tuple(args.api_keys or ("sandbox-key",)),
        daily_quota=args.daily_quota,
        window_seconds=args.window_seconds,
        latency_ms=args.latency_ms,
        error_rate=args.error_rate,
        seed=args.seed,
        repeat_counts=args.repeat_counts,
        faults=load_faults(args.faults) if args.faults else (),
        shared_consumer=args.shared_consumer,
        shared_at=args.shared_at,
        shared_span=args.shared_span,
        headers=headers,
        garble=tuple(args.garble or ()),
        outages=tuple(outages),
    )
    serve(config)
    return 0


def _open_for_reading(state_path: str | None) -> SqliteStateStore:
    from .state import default_state_path, open_store

    path = Path(state_path).expanduser() if state_path else default_state_path()
    if not path.exists():
        raise StateError(
            f"state store {path} does not exist: pass --state PATH of a store that a run has used"
        )
    return open_store(path, lock=False)


def _cmd_export(args: argparse.Namespace) -> int:
    from .report import export_run

    store = _open_for_reading(args.state_path)
    try:
        summary = export_run(store, args.run_id, Path(args.out))
    finally:
        store.close()
    print(
        f"provisioner: run {args.run_id} exported to {args.out} ({summary.get('rows_total')} rows)",
        file=sys.stderr,
    )
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from .report import format_status, status_report

    store = _open_for_reading(args.state_path)
    try:
        report = status_report(store, time.time())
    finally:
        store.close()
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_status(report))
    return 0


_COMMANDS = {"run": _cmd_run, "sandbox": _cmd_sandbox, "export": _cmd_export, "status": _cmd_status}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``provisioner`` and ``python -m provisioner``; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except ProvisionerError as exc:
        print(f"provisioner: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("provisioner: interrupted", file=sys.stderr)
        return 130
