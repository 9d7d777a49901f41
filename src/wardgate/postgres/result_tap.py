"""Recording what the client received: the PostgreSQL relay's names for the one
response recorder every protocol shares (``audit/responses.py``). A ``ResultTap`` sees
every DataRow and CopyData byte of one action as it goes to the client (after masking),
in the pieces the relay forwards them in; the recorder's writer turns the kept bytes
into rows."""

from __future__ import annotations

from wardgate.audit.responses import ResponseTap as ResultTap
from wardgate.audit.responses import SessionResults

__all__ = ["ResultTap", "SessionResults"]
