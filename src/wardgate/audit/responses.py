"""A SQL action's response, as the recorder stores it.

On the gateway's event loop the PostgreSQL relay only hashes the result stream and
keeps its first bytes (``postgres/result_tap.py``): per-row work there would slow
every query. Here, in the recorder's writer (its own process under `wardgate serve`),
those bytes become rows: DataRow messages decoded with the client encoding (NULL is
None; a value that is not text in it is ``\\x`` and hex), CopyData as one-value rows,
up to the row budget. A message cut by the byte budget is left out.
"""

from __future__ import annotations

from typing import Any

_DATA_ROW = 68  # D
_COPY_DATA = 100  # d


def response_payload(result: dict[str, Any]) -> dict[str, Any]:
    """The ``result`` of an action event from what the relay captured: ``raw`` (the
    first bytes of the stream), ``encoding``, ``max_rows``, ``stream_bytes``, ``sha256``."""
    raw: bytes = result.get("raw", b"")
    encoding = str(result.get("encoding", "utf-8"))
    max_rows = int(result.get("max_rows", 0))
    rows: list[list[str | None]] = []
    pos = 0
    recorded = 0
    end = len(raw)
    while pos + 5 <= end and len(rows) < max_rows:
        t = raw[pos]
        size = int.from_bytes(raw[pos + 1 : pos + 5], "big")
        stop = pos + 1 + size
        if stop > end or t not in (_DATA_ROW, _COPY_DATA):
            break
        body = raw[pos + 5 : stop]
        rows.append(_row(body, encoding) if t == _DATA_ROW else [_text(body, encoding)])
        recorded += size - 4
        pos = stop
    stream_bytes = int(result.get("stream_bytes", 0))
    return {
        "rows": rows,
        "recorded_rows": len(rows),
        "recorded_bytes": recorded,
        "complete": pos == stream_bytes,
        "stream_bytes": stream_bytes,
        "sha256": result.get("sha256", ""),
    }


def _row(body: bytes, encoding: str) -> list[str | None]:
    count = int.from_bytes(body[0:2], "big")
    pos = 2
    values: list[str | None] = []
    for _ in range(count):
        length = int.from_bytes(body[pos : pos + 4], "big", signed=True)
        pos += 4
        if length < 0:
            values.append(None)
            continue
        values.append(_text(body[pos : pos + length], encoding))
        pos += length
    return values


def _text(raw: bytes, encoding: str) -> str:
    try:
        return raw.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        return "\\x" + raw.hex()
