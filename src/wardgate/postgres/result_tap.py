"""Recording what the client received: each action's result stream, within budgets.

A ``ResultTap`` sees every DataRow and CopyData byte of one action exactly as it goes
to the client (after masking), in the pieces the relay forwards them in (unmasked
sessions pass rows on as slices that may cut a message anywhere). It hashes all of
them (the digest of the whole result stream) and keeps the first ones, up to the
per-action ``bytes`` and what is left of the session's ``session_bytes``. Nothing is
parsed here: on the event loop that would cost Python work per row on every query.
The recorder's writer turns the kept bytes into rows (``audit/responses.py``), up to
``rows``.
"""

from __future__ import annotations

import hashlib
from typing import Any


class SessionResults:
    """The per-session budget and the per-action limits (``connections.*.results``)."""

    __slots__ = ("rows", "bytes", "session_left")

    def __init__(self, rows: int, bytes_: int, session_bytes: int) -> None:
        self.rows = rows
        self.bytes = bytes_
        self.session_left = session_bytes


class ResultTap:
    __slots__ = ("_budget", "_encoding", "_hash", "_raw", "_room", "stream_bytes")

    def __init__(self, budget: SessionResults, encoding: str) -> None:
        self._budget = budget
        self._encoding = encoding
        self._hash = hashlib.sha256()
        self._raw = bytearray()
        self._room = min(budget.bytes, budget.session_left) if budget.rows > 0 else 0
        self.stream_bytes = 0

    def feed(self, data: bytes | memoryview) -> None:
        """Bytes of DataRow/CopyData messages, in stream order, as sent to the client."""
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
        """What the ActionRecord carries; ``audit.responses.response_payload`` makes the
        event's ``result`` of it."""
        return {
            "raw": bytes(self._raw),
            "encoding": self._encoding,
            "max_rows": self._budget.rows,
            "stream_bytes": self.stream_bytes,
            "sha256": self._hash.hexdigest(),
        }
