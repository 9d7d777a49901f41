"""What protocols hand to the recorder: plain frozen values, cheap to build on the event loop.

Turning them into JSON and hash-chain events happens later, in the recorder's writer
thread (see ``audit.recorder``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from wardgate.actions import Action, Verdict
from wardgate.identity.principals import Principal
from wardgate.pickling import positional_pickle

ACTION_STATUSES = frozenset({"ok", "error", "blocked", "not_executed", "interrupted"})

# The error of an action whose outcome the gateway never saw because it stopped (a crash
# or kill -9): its record comes from the journal (audit.journal), written before the
# statement was forwarded.
INTERRUPTED_BY_CRASH = (
    "the gateway stopped before this statement's result reached it: it may have run"
)

# The rule of a refusal because the recorder cannot keep a record (the recorder's
# `unavailable`): nothing runs that cannot be recorded. Such refusals are not recorded
# themselves (that would grow the very backlog that caused them); a metric counts them.
AUDIT_UNAVAILABLE_RULE = "wardgate:audit-unavailable"
AUDIT_UNAVAILABLE = "wardgate cannot record this action: the audit store is unavailable"
AUDIT_UNAVAILABLE_HINT = (
    "Nothing was run. The gateway refuses what it cannot record; it recovers by itself once "
    "its store accepts writes again (check the store: disk space, permissions, the "
    "database server; /readyz says why). Retry in a moment."
)


@positional_pickle
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
    gateway: str | None = None  # the gateway instance (Recorder stamps it), for restarts


@positional_pickle
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
    trace_id: str | None = None  # the agent's conversation/trace id, when it sends one
    output: str | None = None  # SSH: the command's output as the client saw it (masked, capped)
    # SQL: the start of the result stream the client received (masked, within budgets),
    # its digest and size (postgres/result_tap.py); the writer decodes the rows
    # (audit/responses.py).
    result: dict[str, Any] | None = None


def action_record(
    session_id: str,
    seq: int,
    action: Action,
    verdict: Verdict,
    status: str,
    *,
    started: float,
    t0: float | None,
    rows: int | None = None,
    command: str | None = None,
    error: str | None = None,
    sqlstate: str | None = None,
    trace_id: str | None = None,
    output: str | None = None,
    result: dict[str, Any] | None = None,
) -> ActionRecord:
    """The record of one action, the way every protocol builds it: ``started`` is when
    it began (``time.time()``), ``t0`` the ``time.perf_counter()`` reading then, from
    which the duration is measured now (None: not finished yet, as in a journalled
    intent, whose duration is NaN)."""
    return ActionRecord(
        session_id=session_id,
        seq=seq,
        action=action,
        verdict=verdict,
        started_at=started,
        duration_ms=float("nan") if t0 is None else (time.perf_counter() - t0) * 1000.0,
        status=status,
        rows=rows,
        command=command,
        error=error,
        sqlstate=sqlstate,
        trace_id=trace_id,
        output=output,
        result=result,
    )


def intended_record(
    session_id: str,
    seq: int,
    action: Action,
    verdict: Verdict,
    *,
    started: float,
    trace_id: str | None = None,
) -> ActionRecord:
    """What the journal holds (``Recorder.intend``) for an action about to reach its
    target, until its outcome replaces it: interrupted, if the gateway dies meanwhile."""
    return action_record(
        session_id, seq, action, verdict, "interrupted",
        started=started, t0=None, error=INTERRUPTED_BY_CRASH, trace_id=trace_id,
    )  # fmt: skip


@positional_pickle
@dataclass(frozen=True, slots=True)
class SessionEnd:
    session_id: str
    ended_at: float
    status: str = "closed"
    error: str | None = None


@positional_pickle
@dataclass(frozen=True, slots=True)
class RecordingRecord:
    """A terminal session's recording (asciicast v2), kept in the store and hashed into
    the chain."""

    session_id: str
    seq: int
    started_at: float
    cast: str


Record = SessionRecord | ActionRecord | SessionEnd | RecordingRecord
