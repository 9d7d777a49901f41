"""After a crash: sessions a gateway left `active` are closed as `interrupted`.

A gateway killed with kill -9 (or by the kernel, or a power loss) never records the end
of its open sessions, and `wardgate sessions list` would show them active forever. At
start, before any worker runs, `wardgate serve` closes the sessions that an earlier run
of the same gateway instance (`serve.gateway_id`: one per data_dir) opened and never
ended. Each gets a `session.end` event in the chain, with the time of its last recorded
event (the closest the record comes to the time of the crash), through the same
`BatchWriter` as every other record. Another replica's sessions are never touched.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select

from wardgate.audit import journal
from wardgate.audit.records import Record, SessionEnd
from wardgate.audit.writer import BatchWriter
from wardgate.store.db import Store
from wardgate.store.models import AuditEvent, SessionRow

INTERRUPTED_ERROR = (
    "the gateway stopped without closing this session (a crash or kill -9); it ended at "
    "its last recorded event at the latest"
)
_CHUNK = 500


def replay_journals(store: Store, root: Path) -> int:
    """Write what each worker's journal under ``root`` holds after its checkpoint into
    the store, then empty it; returns how many records. Runs before any worker."""
    if not root.is_dir():
        return 0
    total = 0
    writer = BatchWriter(store)
    for directory in sorted(p for p in root.iterdir() if p.is_dir()):
        records: list[Record] = journal.pending(directory)
        for start in range(0, len(records), _CHUNK):
            writer.write(records[start : start + _CHUNK])
        total += len(records)
        journal.discard(directory)
    return total


def close_interrupted(store: Store, gateway: str) -> int:
    """Close the sessions ``gateway`` left active; returns how many."""
    with store.session(write=False) as session:
        open_rows = session.execute(
            select(SessionRow.id, SessionRow.started_at).where(
                SessionRow.gateway == gateway, SessionRow.status == "active"
            )
        ).all()
    closed = 0
    writer = BatchWriter(store)
    for start in range(0, len(open_rows), _CHUNK):
        chunk = open_rows[start : start + _CHUNK]
        ids = [row.id for row in chunk]
        with store.session(write=False) as session:
            last = dict(
                session.execute(
                    select(AuditEvent.session_id, func.max(AuditEvent.ts))
                    .where(AuditEvent.session_id.in_(ids))
                    .group_by(AuditEvent.session_id)
                ).all()
            )
        writer.write(
            [
                SessionEnd(
                    row.id,
                    float(last.get(row.id) or row.started_at),
                    "interrupted",
                    INTERRUPTED_ERROR,
                )
                for row in chunk
            ]
        )
        closed += len(chunk)
    return closed
