"""Command line: parse arguments into settings, call the runner, map errors to exit codes.

Exit codes (a public contract, see the README): 0 every row provisioned; 1 some rows
failed; 2 usage, config, manifest, output or state error (nothing sent, except when the
outputs or the store fail mid-run: the message then names the way back); 3 rows deferred
and none failed; 4 aborted because the key was refused; 75 another run holds the state
store; 130/143 interrupted by SIGINT/SIGTERM after in-flight requests finished and the
outputs were written.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from provisioner._cli.args import RUN_SETTINGS, VALIDATE_SETTINGS, build_parser
from provisioner._core.vocab import ExitCode
from provisioner.errors import ProvisionerError, StateError

# Start-up (BENCHMARKS.md, "Start-up"): what only some commands need is imported by them,
# never here: asyncio, structlog and the settings for a run or validate, the sandbox's
# server for `sandbox`, psycopg for a postgresql:// store, prometheus_client for a metrics
# file, rich for the terminal display. `provisioner --help` imports argparse and the
# settings table.
if TYPE_CHECKING:
    from provisioner._outputs.observe import RunObserver
    from provisioner._state.retention import Policy
    from provisioner._state.store import SqliteStateStore

T = TypeVar("T")


def _import_structlog_without_rich() -> None:
    """Import structlog with rich hidden from it, once, before anything logs.

    structlog imports rich at its own import when rich is installed (~60 ms, a fifth of a
    short run's start-up), for coloured tracebacks and reprs of locals that the command
    never shows (``logs.py`` renders tracebacks plainly, without locals). The command owns
    its process, so it can hide rich for that one import; the terminal display imports
    rich itself when it draws. A Python host's structlog is left alone: this is not
    called on the API's way.
    """
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    sys.modules["rich"] = None  # type: ignore[assignment]  # `import rich` raises ImportError
    try:
        import structlog  # noqa: F401
    finally:
        del sys.modules["rich"]


def _asyncio_run(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when the optional extra is installed, else on asyncio's loop."""
    import asyncio

    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def _cmd_run(args: argparse.Namespace) -> int:
    import orjson

    from provisioner._config.settings import build_settings
    from provisioner._core import logs
    from provisioner._outputs.report import human_summary
    from provisioner.api import run_pipeline

    cli = {k: getattr(args, k, None) for k in RUN_SETTINGS}
    settings = build_settings(
        manifest=args.manifest, out_dir=args.out, cli=cli, env=os.environ, config_path=args.config
    )
    logs.configure(settings.log_format, settings.log_level)
    observers: list[RunObserver] = []
    if args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty()):
        from provisioner._outputs.progress import TerminalDisplay

        observers.append(TerminalDisplay(json_lines=logs.json_asked()))
    result = _asyncio_run(run_pipeline(settings, handle_signals=True, observers=observers))
    text = human_summary(result.summary, settings.out_dir)
    if logs.json_asked():
        # Under JSON logs every stderr line is a JSON object, the closing lines too.
        logs.get_logger(__name__).info(
            "run_summary",
            run_id=result.summary.get("run_id"),
            exit_code=result.exit_code,
            lines=text.splitlines(),
        )
    else:
        print(text, file=sys.stderr)
    if args.json:
        print(orjson.dumps(result.summary, option=orjson.OPT_INDENT_2).decode(), flush=True)
    return result.exit_code


def _cmd_sandbox(args: argparse.Namespace) -> int:
    from provisioner.errors import UsageError
    from provisioner.sandbox.campaigns import load_campaigns
    from provisioner.sandbox.modes import parse_outage
    from provisioner.sandbox.server import SandboxConfig, load_faults, serve

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
        reset=args.reset,
        outages=tuple(outages),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        campaigns=load_campaigns(args.campaigns) if args.campaigns else None,
        invalid_counts=args.invalid_counts,
        keys_without_campaigns_list=tuple(args.keys_without_campaigns_list or ()),
    )
    serve(config)
    return ExitCode.OK


def _state_path(args: argparse.Namespace) -> str | None:
    """The store ``status`` and ``export`` read: --state, else PROVISIONER_STATE, else the
    config's [state] path or url (--config), else None (the default), as ``run`` resolves
    it."""
    if args.state_path:
        return str(args.state_path)
    if os.environ.get("PROVISIONER_STATE"):
        return os.environ["PROVISIONER_STATE"]
    if args.config:
        from provisioner._config.settings import load_config_file

        config = load_config_file(Path(args.config))
        for name in ("path", "url"):  # either names the store, as for run
            value = config.get(("state", name))
            if isinstance(value, str) and value:
                return value
    return None


def _open_for_reading(state_path: str | None) -> SqliteStateStore:
    from provisioner._state.opening import open_store
    from provisioner._state.store import state_location

    path = state_location(state_path)
    if isinstance(path, Path) and not path.exists():
        raise StateError(
            f"state store {path} does not exist: pass --state PATH of a store that a run has used"
        )
    return open_store(path, lock=False)


def _cmd_export(args: argparse.Namespace) -> int:
    from provisioner._outputs.report import RESULTS_CSV, export_csv, export_run

    spreadsheet = args.export_format == "csv"
    store = _open_for_reading(_state_path(args))
    try:
        if args.group is not None:
            return _export_group(store, args.group, Path(args.out))
        write = export_csv if spreadsheet else export_run
        summary = write(store, args.run_id, Path(args.out))
    finally:
        store.close()
    where = (
        f"{args.out}/{RESULTS_CSV} (a report for spreadsheets, not a manifest)"
        if spreadsheet
        else args.out
    )
    print(
        f"provisioner: run {args.run_id} exported to {where} ({summary.get('rows_total')} rows)",
        file=sys.stderr,
    )
    return ExitCode.OK


def _export_group(store: SqliteStateStore, group: str, out: Path) -> int:
    """export --group: the group's four files, or (exit 3) the chunks not done yet."""
    from provisioner._outputs.group_report import export_group

    summary, missing = export_group(store, group, out)
    if missing:
        shown = "; ".join(missing[:10]) + ("; ..." if len(missing) > 10 else "")
        print(
            f"provisioner: group {group} is not finished: {len(missing)} chunks not done"
            f" ({shown}); nothing was written: run a worker of the group again",
            file=sys.stderr,
        )
        return ExitCode.DEFERRED
    print(
        f"provisioner: group {group} exported to {out} ({summary.get('rows_total')} rows)",
        file=sys.stderr,
    )
    code = summary.get("exit_code")
    return code if isinstance(code, int) else ExitCode.OK


def _cmd_status(args: argparse.Namespace) -> int:
    import orjson

    from provisioner._outputs.report import format_status, status_report

    store = _open_for_reading(_state_path(args))
    try:
        report = status_report(store, time.time(), _retention(args))
        if args.group is not None:
            from provisioner._outputs.group_report import group_status

            report["group"] = group_status(store, args.group)
    finally:
        store.close()
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_status(report))
        if args.group is not None:
            from provisioner._outputs.group_report import format_group_status

            print(format_group_status(report["group"]))  # type: ignore[arg-type]
    return ExitCode.OK


def _retention(args: argparse.Namespace) -> Policy:
    """The retention in force: --keep-days/--keep-runs (prune), environment, config."""
    from provisioner._config.settings import resolve_keys
    from provisioner._state.retention import Policy

    names = ("state_keep_days", "state_keep_runs")
    values = resolve_keys(names, cli=vars(args), env=os.environ, config_path=args.config)
    return Policy(values["state_keep_days"], values["state_keep_runs"])


def _cmd_prune(args: argparse.Namespace) -> int:
    import orjson

    from provisioner._outputs.report import format_pruned
    from provisioner._state.opening import is_database_url, open_store
    from provisioner._state.store import state_location

    policy = _retention(args)
    location = state_location(_state_path(args))
    if isinstance(location, Path) and not location.exists():
        raise StateError(
            f"state store {location} does not exist: pass --state PATH of a store that a run"
            " has used"
        )
    # SQLite: the run lock, so no run is live meanwhile. PostgreSQL: no lease (runs of
    # other workspaces go on; a run only ever touches its own rows).
    store = open_store(location, lock=not is_database_url(location))
    try:
        pruned = store.prune(policy, dry_run=args.dry_run, vacuum=args.vacuum)
    finally:
        store.close()
    if args.json:
        document = {"state": str(store.path), "retention": policy.to_dict(), **pruned.to_dict()}
        print(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_pruned(pruned, policy))
    return ExitCode.OK


def _cmd_validate(args: argparse.Namespace) -> int:
    import orjson

    from provisioner._config.settings import build_settings
    from provisioner._pipeline.validate import forecast, parse_deadline

    cli = {k: getattr(args, k, None) for k in VALIDATE_SETTINGS}
    # No key is no error here: the manifest is still checked (linting in CI); the report
    # says what could not be compared.
    settings = build_settings(
        manifest=args.manifest, out_dir=".", cli=cli, env=os.environ, config_path=args.config,
        require_key=False,
    )  # fmt: skip
    report = forecast(settings, by=parse_deadline(args.by) if args.by else None)
    if args.json:
        print(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        print(report.text())
    return report.exit_code


def _cmd_state(args: argparse.Namespace) -> int:
    from provisioner._state.copy import copy_store
    from provisioner._state.store import state_location

    copied = copy_store(
        state_location(args.source),
        state_location(args.target),
        lock_wait=args.state_lock_wait or 0.0,
    )
    print(f"provisioner: {copied.text()}", file=sys.stderr)
    return ExitCode.OK


_COMMANDS = {
    "run": _cmd_run,
    "sandbox": _cmd_sandbox,
    "export": _cmd_export,
    "status": _cmd_status,
    "prune": _cmd_prune,
    "validate": _cmd_validate,
    "state": _cmd_state,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``provisioner`` and ``python -m provisioner``; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except BrokenPipeError:  # `provisioner --version | true`
        return _reader_left()
    _import_structlog_without_rich()
    try:
        code = _COMMANDS[args.command](args)
        sys.stdout.flush()  # here, so that a closed pipe is caught below, not at exit
        return code
    except BrokenPipeError:
        return _reader_left()
    except ProvisionerError as exc:
        from provisioner._outputs.report import printable

        _fatal(args, "error", f"provisioner: error: {printable(exc)}", exc.exit_code)
        return ExitCode(exc.exit_code)
    except KeyboardInterrupt:
        _fatal(args, "interrupted", "provisioner: interrupted", ExitCode.INTERRUPTED)
        return ExitCode.INTERRUPTED


def _reader_left() -> int:
    """`provisioner status | head -1`: the reader left. No traceback, and no second error
    when the interpreter flushes stdout at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return ExitCode.BROKEN_PIPE  # 128 + SIGPIPE, what a killed program reports


def _fatal(args: argparse.Namespace, event: str, text: str, exit_code: int) -> None:
    """The last line of a run that stopped: a JSON object under JSON logs (the format
    chosen, else the one asked for when the error came before logging was set up)."""
    import orjson

    from provisioner._core import logs

    asked = getattr(args, "log_format", None) or os.environ.get("PROVISIONER_LOG_FORMAT")
    if not (logs.json_asked() or asked == "json"):
        print(text, file=sys.stderr)
        return
    line = {
        "event": event,
        "level": "error",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "message": text.removeprefix("provisioner: "),
        "exit_code": exit_code,
    }
    print(orjson.dumps(line).decode(), file=sys.stderr)
