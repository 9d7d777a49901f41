"""A SQL action's response in the record: the bytes the client received, kept as
bytes, turned into rows only when someone reads them.

On the gateway's event loop the PostgreSQL relay hashes the result stream and keeps
its first bytes (``postgres/result_tap.py``). The recorder's writer (``response_payload``)
trims them to whole messages within the row budget and stores them base64-encoded in
the action's event, so the chain covers the exact wire bytes and writing costs no
per-row Python work. Readers (CLI, API, export) call ``decoded`` to get rows:
DataRow values decoded with the client encoding (NULL is None; a value that is not
text in it, such as a binary-format column, is ``\\x`` and hex), CopyData as
one-value rows.

Stored: ``{"format": "pg-messages/1", "encoding", "data" (base64), "recorded_rows",
"recorded_bytes", "complete", "stream_bytes", "sha256"}``.

SSH exec output and MCP tool results go through the same ``ResponseTap`` and budgets
(``connections.*.results``: ``bytes`` per action, ``session_bytes`` per session), kept
as text: ``{"format": "text/1", "encoding": "utf-8", "text", "recorded_bytes",
"complete", "stream_bytes", "sha256"}`` (text, not base64: searchable).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from typing import Any

FORMAT = "pg-messages/1"
TEXT_FORMAT = "text/1"
_DATA_ROW = 68  # D
_COPY_DATA = 100  # d
_U32 = struct.Struct("!I").unpack_from
_I32 = struct.Struct("!i").unpack_from
_I16 = struct.Struct("!h").unpack_from


class SessionResults:
    """The per-session budget and the per-action limits (``connections.*.results``)."""

    __slots__ = ("rows", "bytes", "session_left")

    def __init__(self, rows: int, bytes_: int, session_bytes: int) -> None:
        self.rows = rows
        self.bytes = bytes_
        self.session_left = session_bytes


def session_budget(config: Any, connection: str) -> SessionResults | None:
    """A new session's budget from ``connections.<connection>.results`` (None: its
    responses are not recorded)."""
    conn = config.connections.get(connection)
    results = conn.results if conn is not None else None
    if results is None or not results.record:
        return None
    return SessionResults(results.rows, results.bytes, results.session_bytes)


class ResponseTap:
    """Sees every byte of one action's response exactly as it goes to the client (after
    masking), in the pieces it is forwarded in: hashes all of them (the digest of the
    whole stream) and keeps the first ones, up to the per-action ``bytes`` and what is
    left of the session's ``session_bytes``. Nothing is parsed here: on the event loop
    that would cost Python work per row. ``kind``: "pg" (DataRow/CopyData messages,
    made rows by the writer) or "text" (SSH output, MCP results)."""

    __slots__ = ("_budget", "_encoding", "_hash", "_kind", "_raw", "_room", "stream_bytes")

    def __init__(self, budget: SessionResults, encoding: str, kind: str = "pg") -> None:
        self._budget = budget
        self._encoding = encoding
        self._kind = kind
        self._hash = hashlib.sha256()
        self._raw = bytearray()
        self._room = min(budget.bytes, budget.session_left) if budget.rows > 0 else 0
        self.stream_bytes = 0

    def feed(self, data: bytes | memoryview) -> None:
        self._hash.update(data)
        n = len(data)
        self.stream_bytes += n
        room = self._room
        if room > 0:
            kept = data[:room] if n > room else data
            self._raw += kept
            self._room = room - len(kept)
            self._budget.session_left -= len(kept)

    def summary(self) -> dict[str, Any]:
        """What the ActionRecord carries; ``response_payload`` makes the event's
        ``result`` of it."""
        return {
            "raw": bytes(self._raw),
            "encoding": self._encoding,
            "max_rows": self._budget.rows,
            "stream_bytes": self.stream_bytes,
            "sha256": self._hash.hexdigest(),
            "kind": self._kind,
        }


def response_payload(
    captured: dict[str, Any], rows: int | None = None, command: str | None = None
) -> dict[str, Any]:
    """The event's ``result`` from what the relay captured (ResponseTap.summary): the
    first ``max_rows`` whole messages of ``raw``. ``rows`` and ``command`` are the
    action's command tag: a SELECT whose whole stream was kept and whose row count is
    within the budget is kept as it is, without walking its messages."""
    raw: bytes = captured.get("raw", b"")
    if captured.get("kind") == "text":
        stream_bytes = int(captured.get("stream_bytes", 0))
        # Stored as text, not base64: searchable like the statement (the digest is of
        # the exact bytes; a character cut in half by the budget becomes U+FFFD).
        encoding = str(captured.get("encoding", "utf-8"))
        return {
            "format": TEXT_FORMAT,
            "encoding": encoding,
            "text": raw.decode(encoding, "replace"),
            "recorded_bytes": len(raw),
            "complete": len(raw) == stream_bytes,
            "stream_bytes": stream_bytes,
            "sha256": captured.get("sha256", ""),
        }
    max_rows = int(captured.get("max_rows", 0))
    stream_bytes = int(captured.get("stream_bytes", 0))
    end = len(raw)
    if command == "SELECT" and rows is not None and rows <= max_rows and end == stream_bytes:
        pos, count = end, rows  # every DataRow of the result, and no more than allowed
    else:
        pos = count = 0
        while pos + 5 <= end and count < max_rows:
            (size,) = _U32(raw, pos + 1)
            if pos + 1 + size > end or raw[pos] not in (_DATA_ROW, _COPY_DATA):
                break
            pos += 1 + size
            count += 1
    return {
        "format": FORMAT,
        "encoding": str(captured.get("encoding", "utf-8")),
        "data": base64.b64encode(raw if pos == end else raw[:pos]).decode("ascii"),
        "recorded_rows": count,
        "recorded_bytes": pos,
        "complete": pos == stream_bytes,
        "stream_bytes": stream_bytes,
        "sha256": captured.get("sha256", ""),
    }


def decoded(result: Any) -> Any:
    """A stored ``result`` with ``rows`` in place of ``data`` (anything else, text/1
    included, as is)."""
    if not isinstance(result, dict) or result.get("format") != FORMAT or "data" not in result:
        return result  # not ours, or decoded already
    out = {k: v for k, v in result.items() if k != "data"}
    try:
        raw = base64.b64decode(str(result.get("data", "")), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    out["rows"] = rows_of(raw, str(result.get("encoding", "utf-8")))
    return out


def rows_of(raw: bytes, encoding: str) -> list[list[str | None]]:
    rows: list[list[str | None]] = []
    pos, end = 0, len(raw)
    while pos + 5 <= end:
        t = raw[pos]
        (size,) = _U32(raw, pos + 1)
        stop = pos + 1 + size
        if stop > end:
            break
        if t == _DATA_ROW:
            try:
                rows.append(_row(raw, pos + 5, encoding))
            except (UnicodeDecodeError, LookupError):  # not text: that row value by value
                rows.append(_row(raw, pos + 5, encoding, strict=False))
        elif t == _COPY_DATA:
            rows.append([_text(raw[pos + 5 : stop], encoding)])
        pos = stop
    return rows


def _row(raw: bytes, pos: int, encoding: str, strict: bool = True) -> list[str | None]:
    (count,) = _I16(raw, pos)
    pos += 2
    values: list[str | None] = []
    for _ in range(count):
        (length,) = _I32(raw, pos)
        pos += 4
        if length < 0:
            values.append(None)
            continue
        value = raw[pos : pos + length]
        values.append(value.decode(encoding) if strict else _text(value, encoding))
        pos += length
    return values


def _text(raw: bytes, encoding: str) -> str:
    try:
        return raw.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        return "\\x" + raw.hex()
