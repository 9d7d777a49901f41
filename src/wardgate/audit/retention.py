"""Retention: a connection's records older than ``connections.<name>.retention_days``
leave the store, and the chain says so.

The sweep deletes, in one transaction, a batch of that connection's old audit events
(statements, their responses, session starts and ends; never review or grant events,
nor the events signed checkpoints point at), the sessions that ended before the cutoff
and their terminal recordings, and appends a ``retention.swept`` event listing what
went: the count, and each run of consecutive deleted ids with the hash of its last
event. ``verify`` walks over a gap only where a swept run explains it and the next
event's ``prev_hash`` is that run's hash; deleting events any other way still breaks
the chain, and so does editing or deleting the ``retention.swept`` event itself (it is
a link like any other, covered by later checkpoints).

A retention.swept event is only as trustworthy as who wrote it: anyone with the store
can append one naming events they deleted. ``verify --checkpoint`` therefore accepts a
sweep of events the checkpoint covers only when a checkpoint signed after the sweep
covers the sweep event too; given the checkpoint key, a sweep signs the head right
after it (``key``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, not_, select

from wardgate.audit.chain import SWEPT_TYPE, NewEvent, append_events
from wardgate.store.db import Store
from wardgate.store.models import AuditCheckpoint, AuditEvent, Recording, SessionRow

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SWEPT = SWEPT_TYPE
SWEEP_BATCH = 5000  # events per transaction (and per retention.swept event)
DAY = 86400.0


def _runs(rows: list[tuple[int, str]]) -> list[list[Any]]:
    """[[first id, last id, hash of last], ...] of consecutive ids, in order."""
    runs: list[list[Any]] = []
    for event_id, digest in rows:
        if runs and runs[-1][1] == event_id - 1:
            runs[-1][1], runs[-1][2] = event_id, digest
        else:
            runs.append([event_id, event_id, digest])
    return runs


def sweep_connection(
    store: Store,
    connection: str,
    days: float,
    now: float | None = None,
    *,
    key: Ed25519PrivateKey | None = None,
) -> int:
    """Delete ``connection``'s records older than ``days``; returns how many audit
    events went. Each batch is one transaction ending with its ``retention.swept``;
    with the checkpoint ``key``, the head is signed after a sweep that deleted events."""
    total = _sweep_connection(store, connection, days, now)
    if total and key is not None:
        from wardgate.audit.checkpoint import sign_head

        sign_head(store, key, force=True, vouch_sweeps=True)  # the sweeps it just wrote
    return total


def _sweep_connection(store: Store, connection: str, days: float, now: float | None) -> int:
    now = time.time() if now is None else now
    cutoff = now - days * DAY
    total = 0
    while True:
        with store.session() as session:
            rows = [
                (int(i), str(h))
                for i, h in session.execute(
                    select(AuditEvent.id, AuditEvent.hash)
                    .where(
                        AuditEvent.connection == connection,
                        AuditEvent.ts < cutoff,
                        not_(AuditEvent.type.like("review.%")),
                        not_(AuditEvent.type.like("grant.%")),
                        AuditEvent.type != SWEPT,
                        AuditEvent.id.not_in(select(AuditCheckpoint.seq)),
                    )
                    .order_by(AuditEvent.id)
                    .limit(SWEEP_BATCH)
                    .with_for_update()
                )
            ]
            ended = list(
                session.scalars(
                    select(SessionRow.id)
                    .where(
                        SessionRow.connection == connection,
                        SessionRow.ended_at.is_not(None),
                        SessionRow.ended_at < cutoff,
                    )
                    .limit(SWEEP_BATCH)
                )
            )
            if not rows and not ended:
                return total
            ids = [i for i, _ in rows]
            for start in range(0, len(ids), 500):  # bound the IN list
                session.execute(
                    delete(AuditEvent).where(AuditEvent.id.in_(ids[start : start + 500]))
                )
            recordings = 0
            if ended:
                gone = session.execute(delete(Recording).where(Recording.session_id.in_(ended)))
                recordings = int(getattr(gone, "rowcount", 0) or 0)
                session.execute(delete(SessionRow).where(SessionRow.id.in_(ended)))
            append_events(
                session,
                [
                    NewEvent(
                        ts=now,
                        type=SWEPT,
                        session_id="",
                        principal="wardgate",
                        connection=connection,
                        payload={
                            "connection": connection,
                            "retention_days": days,
                            "before": cutoff,
                            "events": len(ids),
                            "sessions": len(ended),
                            "recordings": recordings,
                            "runs": _runs(rows),
                        },
                    )
                ],
            )
            total += len(ids)
            if len(rows) < SWEEP_BATCH and len(ended) < SWEEP_BATCH:
                return total


def sweep(
    store: Store, config: Any, now: float | None = None, *, key: Ed25519PrivateKey | None = None
) -> dict[str, int]:
    """Every connection with ``retention_days`` set: events deleted per connection."""
    done: dict[str, int] = {}
    for name, conn in config.connections.items():
        days = getattr(conn, "retention_days", None)
        if days:
            done[name] = sweep_connection(store, name, float(days), now, key=key)
    return done
