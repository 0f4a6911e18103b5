"""Structured logging, configured once per process.

Events have stable names (``run_started``, ``row_failed``, ``rate_limited`` ...) and carry
their data as keyword arguments. On a terminal they render as readable console lines;
otherwise (cron, systemd, Kubernetes) as one JSON object per line, with no colour codes.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import orjson
import structlog
from structlog.tracebacks import ExceptionDictTransformer

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _printable(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Escape what a terminal would act on in console lines: a refused campaign_id may hold
    ESC sequences, line breaks (a forged log line) or bidi overrides. The console renderer
    prints strings raw; JSON logs escape them already."""
    for key, value in event_dict.items():
        if isinstance(value, str) and not value.isprintable():
            event_dict[key] = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in value)
    return event_dict


def _json_dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time, so that the terminal display
    (which redirects stderr while it draws) can place log lines above itself."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


_json_asked = False


def json_asked() -> bool:
    """Whether ``configure`` was asked for JSON by name (``--log-format json``, the config
    or the environment), not just chose it because stderr is not a terminal: then the
    closing lines and fatal errors are JSON objects too."""
    return _json_asked


def configure(fmt: str | None = None, level: str = "info", stream: TextIO | None = None) -> None:
    """Configure structlog for the whole process.

    ``fmt`` is "json" or "console"; None picks console on a terminal and JSON elsewhere.
    """
    global _json_asked
    tty = (stream or sys.stderr).isatty()
    _json_asked = fmt == "json"
    if fmt is None:
        fmt = "console" if tty else "json"
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # Tracebacks never show local variables: a frame may hold request headers, and so
    # the API key (structlog shows locals by default).
    if fmt == "json":
        processors += [
            structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False)),
            structlog.processors.JSONRenderer(serializer=_json_dumps),
        ]
    else:
        processors += [
            _printable,
            structlog.dev.ConsoleRenderer(
                colors=tty, exception_formatter=structlog.dev.plain_traceback
            ),
        ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream or _CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )


def _to_stdlib(_logger: Any, _name: str, event_dict: dict[str, Any]) -> Any:
    """The last processor when used as a library: the stdlib record's message is the event
    and its fields (``run_started run_id='…' …``, readable under any host format), and
    the record carries them as ``provisioner_event`` / ``provisioner_fields`` for hosts
    that format records themselves (a JSON formatter)."""
    event = str(event_dict.pop("event", ""))
    exc_info = event_dict.pop("exc_info", None)
    event_dict.pop("level", None)
    text = event + "".join(f" {key}={value!r}" for key, value in event_dict.items())
    kwargs: dict[str, Any] = {
        "extra": {"provisioner_event": event, "provisioner_fields": dict(event_dict)}
    }
    if exc_info:
        kwargs["exc_info"] = exc_info
    return (text,), kwargs


def configure_for_library() -> None:
    """The configuration until the CLI calls ``configure``: events go to the standard
    ``logging`` module (logger = the module's name, under "provisioner"), so that code
    calling the API gets them through its own handlers, levels and format; nothing is
    written to stdout or stderr by this package, and the host's logging is not touched."""
    global _json_asked
    _json_asked = False
    processors: list[Any] = [structlog.contextvars.merge_contextvars, _printable, _to_stdlib]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    """A logger bound to the module name."""
    return structlog.get_logger(name)


if not structlog.is_configured():
    configure_for_library()
