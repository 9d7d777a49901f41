"""Recording what the client received: the rows of each action, within budgets.

A ``ResultTap`` sees every DataRow and CopyData byte of one action exactly as it goes
to the client (after masking), in the pieces the relay forwards them in (unmasked
sessions pass rows on as slices that may cut a message anywhere). It hashes all of
them (the digest of the whole result stream) and decodes whole rows only while the
budgets last: ``rows`` and ``bytes`` per action, ``session_bytes`` per session. Past
the budget it only hashes, which costs one C call per forwarded chunk.

Values are decoded with the client encoding; a value that is not text in it (a binary
format column) is kept as ``\\x`` and hex. NULL is None.
"""

from __future__ import annotations

import hashlib
from typing import Any

_DATA_ROW = 68  # D
_COPY_DATA = 100  # d


class SessionResults:
    """The per-session budget and the per-action limits (``connections.*.results``)."""

    __slots__ = ("rows", "bytes", "session_left")

    def __init__(self, rows: int, bytes_: int, session_bytes: int) -> None:
        self.rows = rows
        self.bytes = bytes_
        self.session_left = session_bytes


class ResultTap:
    __slots__ = (
        "_budget", "_encoding", "_hash", "_buf", "_capturing", "rows", "recorded_bytes",
        "stream_bytes", "truncated",
    )  # fmt: skip

    def __init__(self, budget: SessionResults, encoding: str) -> None:
        self._budget = budget
        self._encoding = encoding
        self._hash = hashlib.sha256()
        self._buf = bytearray()
        self._capturing = budget.rows > 0 and budget.bytes > 0 and budget.session_left > 0
        self.rows: list[list[str | None]] = []
        self.recorded_bytes = 0
        self.stream_bytes = 0
        self.truncated = not self._capturing

    def feed(self, data: bytes | memoryview) -> None:
        """Bytes of DataRow/CopyData messages, in stream order, as sent to the client."""
        self._hash.update(data)
        self.stream_bytes += len(data)
        if self._capturing:
            self._buf += data
            self._parse()

    def _parse(self) -> None:
        buf = self._buf
        budget = self._budget
        while len(buf) >= 5:
            size = int.from_bytes(buf[1:5], "big")  # body + length field
            t = buf[0]
            if len(self.rows) >= budget.rows or t not in (_DATA_ROW, _COPY_DATA):
                self._stop()
                return
            room = min(budget.bytes - self.recorded_bytes, budget.session_left)
            if size - 4 > room:
                # This row does not fit: stop recording rows rather than buffer it.
                self._stop()
                return
            if len(buf) < 1 + size:
                return  # the rest of the message comes in a later chunk
            body = bytes(buf[5 : 1 + size])
            del buf[: 1 + size]
            row: list[str | None] = self._row(body) if t == _DATA_ROW else [self._text(body)]
            self.rows.append(row)
            self.recorded_bytes += size - 4
            budget.session_left -= size - 4

    def _stop(self) -> None:
        self._capturing = False
        self.truncated = True
        self._buf = bytearray()

    def _row(self, body: bytes) -> list[str | None]:
        count = int.from_bytes(body[0:2], "big")
        pos = 2
        values: list[str | None] = []
        for _ in range(count):
            length = int.from_bytes(body[pos : pos + 4], "big", signed=True)
            pos += 4
            if length < 0:
                values.append(None)
                continue
            values.append(self._text(body[pos : pos + length]))
            pos += length
        return values

    def _text(self, raw: bytes) -> str:
        try:
            return raw.decode(self._encoding)
        except (UnicodeDecodeError, LookupError):
            return "\\x" + raw.hex()

    def summary(self) -> dict[str, Any]:
        """What goes into the action's audit event (``result``)."""
        return {
            "rows": self.rows,
            "recorded_rows": len(self.rows),
            "recorded_bytes": self.recorded_bytes,
            "complete": not self.truncated and not self._buf,
            "stream_bytes": self.stream_bytes,
            "sha256": self._hash.hexdigest(),
        }
