"""Console log lines cannot be hijacked by the values they echo."""

from __future__ import annotations

import io

import pytest
import structlog

from provisioner._core import logs


@pytest.mark.parametrize(
    "value",
    [
        "c\x1b[2J\x1b]0;pwned\x07",  # clear screen, set the window title, bell
        "c\x85next\u2028line",  # NEL and LINE SEPARATOR: line breaks to some terminals
        "invoice\u202etxt.exe",  # RIGHT-TO-LEFT OVERRIDE: shows as invoiceexe.txt
    ],
)
def test_console_lines_escape_terminal_controls_from_values(value: str) -> None:
    """Control, line-breaking and bidi characters in a value are shown escaped, on one line."""
    buffer = io.StringIO()
    logs.configure("console", stream=buffer)
    try:
        logs.get_logger("test").warning("row_failed", campaign_id=value, line=2)
    finally:
        structlog.reset_defaults()
    text = buffer.getvalue()
    assert text.endswith("\n")
    assert text[:-1].isprintable(), repr(text)
    assert "campaign_id=" in text
