"""The single error type raised by the PostgreSQL codec."""

from __future__ import annotations


class ProtocolError(Exception):
    """Garbage, malformed or oversized input. The only exception the codec raises for bad bytes."""

    # PostgreSQL's own code for protocol violations, so the proxy can report
    # the failure to a client in the words a PostgreSQL server would use.
    sqlstate = "08P01"
