"""The operator's side: JSON log lines, the MCP SDK's disconnect tracebacks turned into
one INFO line, and CSV cells that cannot start a spreadsheet formula."""

from __future__ import annotations

import json
import logging

import anyio
import pytest

from wardgate.api.resources import csv_cell
from wardgate.integrations.mcp_server import ClientGoneFilter
from wardgate.logs import JsonFormatter


def _record(level: int, msg: str, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, None) if exc is not None else None
    return logging.LogRecord("x.y", level, __file__, 1, msg, None, exc_info)


def test_json_formatter_writes_one_object_with_the_events_fields() -> None:
    record = _record(logging.INFO, "blocked: a\nb")
    record.fields = {"principal": "agent", "connection": "it", "rule": "r", "level": "no"}
    line = JsonFormatter().format(record)
    assert "\n" not in line
    out = json.loads(line)
    assert out["message"] == "blocked: a\nb" and out["level"] == "INFO"
    assert (out["principal"], out["connection"], out["rule"]) == ("agent", "it", "r")
    try:
        raise ValueError("boom")
    except ValueError as exc:
        failed = _record(logging.ERROR, "failed", exc)
        failed.exc_info = (ValueError, exc, exc.__traceback__)
    assert "ValueError: boom" in json.loads(JsonFormatter().format(failed))["exc"]


@pytest.mark.parametrize(
    "exc", [anyio.ClosedResourceError(), anyio.BrokenResourceError(), ConnectionResetError()]
)
def test_a_client_that_went_away_is_one_info_line(exc: BaseException) -> None:
    record = _record(logging.ERROR, "Error in standalone SSE writer", exc)
    assert ClientGoneFilter().filter(record)
    assert record.levelno == logging.INFO and record.exc_info is None
    assert "the client went away" in record.getMessage()


def test_other_errors_keep_their_traceback() -> None:
    record = _record(logging.ERROR, "Error in message router", RuntimeError("bug"))
    assert ClientGoneFilter().filter(record)
    assert record.levelno == logging.ERROR and record.exc_info is not None


@pytest.mark.parametrize(
    ("cell", "safe"),
    [
        ("=1+1", "'=1+1"),
        ("+SUM(A1)", "'+SUM(A1)"),
        ("-- comment\nselect 1", "'-- comment\nselect 1"),
        ("@cmd", "'@cmd"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        # attack17: spreadsheets that trim leading blanks on import (Google Sheets,
        # LibreOffice with "trim spaces") see the formula after them.
        (" =1+1", "' =1+1"),
        ("  @cmd", "'  @cmd"),
        ("\n=HYPERLINK(1)", "'\n=HYPERLINK(1)"),
        ("\u00a0+1", "'\u00a0+1"),
        ("\x0b-1", "'\x0b-1"),
        ("   ", "   "),
        (" select 1", " select 1"),
        ("select 1", "select 1"),
        ("", ""),
        (-5, -5),
        (None, None),
    ],
)
def test_csv_cells_never_start_a_formula(cell: object, safe: object) -> None:
    assert csv_cell(cell) == safe
