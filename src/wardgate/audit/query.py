"""Read-side of the recordings: session summaries and the actions of one session."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from wardgate.audit.responses import decoded
from wardgate.store.db import Store
from wardgate.store.models import AuditEvent, SessionRow

_SESSION_COLUMNS = tuple(c.name for c in SessionRow.__table__.columns)


def _session_dict(row: SessionRow) -> dict[str, Any]:
    return {name: getattr(row, name) for name in _SESSION_COLUMNS}


def list_sessions(
    store: Store,
    *,
    limit: int = 50,
    principal: str | None = None,
    connection: str | None = None,
) -> list[dict[str, Any]]:
    """Newest sessions first."""
    stmt = select(SessionRow).order_by(SessionRow.started_at.desc(), SessionRow.id).limit(limit)
    if principal is not None:
        stmt = stmt.where(SessionRow.principal == principal)
    if connection is not None:
        stmt = stmt.where(SessionRow.connection == connection)
    with store.session(write=False) as session:
        return [_session_dict(row) for row in session.scalars(stmt)]


def get_session(store: Store, session_id: str) -> dict[str, Any] | None:
    """The session summary plus ``actions``: its action events in chain order, each the
    decoded payload with the event's ``id``, ``ts`` and ``hash`` added."""
    with store.session(write=False) as session:
        row = session.get(SessionRow, session_id)
        if row is None:
            return None
        summary = _session_dict(row)
        events = session.execute(
            select(
                AuditEvent.id,
                AuditEvent.ts,
                AuditEvent.type,
                AuditEvent.principal,
                AuditEvent.payload,
                AuditEvent.hash,
            )
            .where(
                AuditEvent.session_id == session_id,
                (AuditEvent.type == "action") | AuditEvent.type.startswith("review."),
            )
            .order_by(AuditEvent.id)
        ).all()
    actions = []
    reviews = []
    for event in events:
        payload = json.loads(event.payload)
        if event.type == "action":
            if "result" in payload:
                payload["result"] = decoded(payload["result"])
            actions.append({"id": event.id, "ts": event.ts, "hash": event.hash, **payload})
        else:  # review events filed from this session: who asked, who decided, what ran
            reviews.append(
                {
                    **payload,
                    "id": event.id,
                    "ts": event.ts,
                    "type": event.type,
                    "by": event.principal,  # the actor; never a payload field
                }
            )
    summary["actions"] = actions
    summary["reviews"] = reviews
    return summary


def list_actions(
    store: Store, *, since: float | None = None, limit: int = 10_000
) -> list[dict[str, Any]]:
    """The newest ``limit`` action events (at or after ``since``), in chain order: each
    the decoded payload with the event's ``id``, ``ts``, ``session_id``, ``principal``
    and ``connection`` added."""
    stmt = (
        select(
            AuditEvent.id,
            AuditEvent.ts,
            AuditEvent.session_id,
            AuditEvent.principal,
            AuditEvent.connection,
            AuditEvent.payload,
        )
        .where(AuditEvent.type == "action")
        .order_by(AuditEvent.id.desc())
        .limit(limit)
    )
    if since is not None:
        stmt = stmt.where(AuditEvent.ts >= since)
    with store.session(write=False) as session:
        events = session.execute(stmt).all()
    return [
        {
            **json.loads(event.payload),
            "id": event.id,
            "ts": event.ts,
            "session_id": event.session_id,
            "principal": event.principal,
            "connection": event.connection,
        }
        for event in reversed(events)
    ]
