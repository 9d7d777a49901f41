"""What protocols hand to the recorder: plain frozen values, cheap to build on the event loop.

Turning them into JSON and hash-chain events happens later, in the recorder's writer
thread (see ``audit.recorder``).
"""

from __future__ import annotations

from dataclasses import dataclass

from wardgate.actions import Action, Verdict
from wardgate.identity.principals import Principal

ACTION_STATUSES = frozenset({"ok", "error", "blocked", "not_executed"})


@dataclass(frozen=True, slots=True)
class SessionRecord:
    id: str
    protocol: str
    principal: Principal
    connection: str
    client_addr: str
    started_at: float
    application_name: str = ""
    tls: bool = False

    def __reduce__(self) -> tuple[type[SessionRecord], tuple[object, ...]]:
        # Pickled by the batch to the recorder process: an explicit tuple is several
        # times cheaper than the generic dataclass state.
        return (
            SessionRecord,
            (
                self.id,
                self.protocol,
                self.principal,
                self.connection,
                self.client_addr,
                self.started_at,
                self.application_name,
                self.tls,
            ),
        )


@dataclass(frozen=True, slots=True)
class ActionRecord:
    session_id: str
    seq: int
    action: Action
    verdict: Verdict
    started_at: float
    duration_ms: float
    status: str  # one of ACTION_STATUSES
    rows: int | None = None
    command: str | None = None  # the CommandComplete tag, e.g. "INSERT 0 3"
    error: str | None = None
    sqlstate: str | None = None

    def __reduce__(self) -> tuple[type[ActionRecord], tuple[object, ...]]:
        # Pickled by the batch to the recorder process: an explicit tuple is several
        # times cheaper than the generic dataclass state.
        return (
            ActionRecord,
            (
                self.session_id,
                self.seq,
                self.action,
                self.verdict,
                self.started_at,
                self.duration_ms,
                self.status,
                self.rows,
                self.command,
                self.error,
                self.sqlstate,
            ),
        )


@dataclass(frozen=True, slots=True)
class SessionEnd:
    session_id: str
    ended_at: float
    status: str = "closed"
    error: str | None = None

    def __reduce__(self) -> tuple[type[SessionEnd], tuple[object, ...]]:
        # Pickled by the batch to the recorder process: an explicit tuple is several
        # times cheaper than the generic dataclass state.
        return (
            SessionEnd,
            (
                self.session_id,
                self.ended_at,
                self.status,
                self.error,
            ),
        )


Record = SessionRecord | ActionRecord | SessionEnd
