"""Turning records into audit events: one store transaction per batch.

`BatchWriter` is the part of the recorder that does the work: it builds the hash-chain
events and the ``sessions`` summaries. It runs either in a thread of the gateway
process or, in `wardgate serve`, in a separate recorder process (``python -m
wardgate.audit.writer``) so that JSON, hashing and database work never hold the
gateway's GIL while it relays traffic.

The recorder process speaks a minimal protocol on its standard streams: the first
frame is the store URL, every later frame a pickled list of records (frame = 4-byte
big-endian length + bytes); for each batch it answers one line, ``ok`` once the batch
committed or ``error <one-line description>``. It exits when its input closes.
Only its parent writes to it, so unpickling that input is as safe as the parent.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import pickle
import sys
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from wardgate.audit.chain import NewEvent, append_events, storable_text
from wardgate.audit.records import (
    ActionRecord,
    Record,
    RecordingRecord,
    SessionEnd,
    SessionRecord,
)
from wardgate.audit.responses import response_payload
from wardgate.logs import setup_logging
from wardgate.store.db import Store, describe_error
from wardgate.store.models import Recording, SessionRow

log = logging.getLogger("wardgate.audit.writer")

MAX_FRAME = 256 * 1024 * 1024


class BatchWriter:
    def __init__(self, store: Store) -> None:
        self._store = store
        # (principal, connection) of sessions whose start this writer wrote, so their
        # end events carry them without a lookup.
        self._open_sessions: dict[str, tuple[str, str]] = {}

    def write(self, batch: list[Record]) -> None:
        """Write ``batch`` in one transaction; raises (and writes nothing) on failure."""
        starting = {
            r.id: (r.principal.name, r.connection) for r in batch if isinstance(r, SessionRecord)
        }
        with self._store.session() as session:
            events = [self._event(session, record, starting) for record in batch]
            self._update_sessions(session, batch)
            append_events(session, events)
        for record in batch:
            if isinstance(record, SessionRecord):
                self._open_sessions[record.id] = (record.principal.name, record.connection)
            elif isinstance(record, SessionEnd):
                self._open_sessions.pop(record.session_id, None)

    def _event(
        self, session: Session, record: Record, starting: dict[str, tuple[str, str]]
    ) -> NewEvent:
        if isinstance(record, SessionRecord):
            p = record.principal
            return NewEvent(
                ts=record.started_at,
                type="session.start",
                session_id=record.id,
                principal=p.name,
                connection=record.connection,
                payload={
                    "protocol": record.protocol,
                    "principal_kind": str(p.kind),
                    "sponsor": p.sponsor,
                    "groups": sorted(p.groups),
                    "client_addr": record.client_addr,
                    "application_name": record.application_name,
                    "tls": record.tls,
                },
            )
        if isinstance(record, RecordingRecord):
            return self._recording(session, record, starting)
        if isinstance(record, ActionRecord):
            a, v = record.action, record.verdict
            return NewEvent(
                ts=record.started_at,
                type="action",
                session_id=record.session_id,
                principal=a.principal.name,
                connection=a.connection,
                # Who, from where and over which protocol is in the session's start
                # event; an action carries only what is its own.
                payload={
                    "seq": record.seq,
                    "kind": a.kind,
                    "text": a.text,
                    "params": list(a.params),
                    "resolved": a.resolved,
                    "verdict": {
                        "decision": str(v.decision),
                        "rule": v.rule,
                        "rules": list(v.rules),
                        "reason": v.reason,
                        "enforced": v.enforced,
                    },
                    "statements": [
                        {
                            "klass": s.klass,
                            "kinds": list(s.kinds),
                            "error": s.error,
                            "tables_read": list(s.tables_read),
                            "tables_written": list(s.tables_written),
                            "functions": list(s.functions),
                        }
                        for s in v.statements
                    ],
                    "status": record.status,
                    "rows": record.rows,
                    "command": record.command,
                    "duration_ms": _finite(record.duration_ms),
                    "error": record.error,
                    "sqlstate": record.sqlstate,
                    **({"trace_id": record.trace_id} if record.trace_id is not None else {}),
                    **({"output": record.output} if record.output is not None else {}),
                    **(
                        {"result": response_payload(record.result, record.rows, record.command)}
                        if record.result is not None
                        else {}
                    ),
                },
            )
        principal, connection = self._session_identity(session, record.session_id, starting)
        return NewEvent(
            ts=record.ended_at,
            type="session.end",
            session_id=record.session_id,
            principal=principal,
            connection=connection,
            payload={"status": record.status, "error": record.error},
        )

    def _recording(
        self, session: Session, record: RecordingRecord, starting: dict[str, tuple[str, str]]
    ) -> NewEvent:
        """Store the cast; the chain gets its hash, so an edited recording is detected."""
        cast = storable_text(record.cast)
        digest = hashlib.sha256(cast.encode("utf-8")).hexdigest()
        stmt = (
            self._store.insert(Recording)
            .values(
                session_id=storable_text(record.session_id),
                seq=record.seq,
                started_at=record.started_at,
                cast=cast,
                sha256=digest,
            )
            .on_conflict_do_nothing(index_elements=["session_id", "seq"])
        )
        session.execute(stmt)
        principal, connection = self._session_identity(session, record.session_id, starting)
        return NewEvent(
            ts=record.started_at,
            type="recording",
            session_id=record.session_id,
            principal=principal,
            connection=connection,
            payload={"seq": record.seq, "sha256": digest, "bytes": len(cast)},
        )

    def _session_identity(
        self, session: Session, session_id: str, starting: dict[str, tuple[str, str]]
    ) -> tuple[str, str]:
        known = starting.get(session_id) or self._open_sessions.get(session_id)
        if known is not None:
            return known
        # Started by an earlier recorder (a restarted process).
        row = session.execute(
            select(SessionRow.principal, SessionRow.connection).where(
                SessionRow.id == storable_text(session_id)
            )
        ).one_or_none()
        return (str(row.principal), str(row.connection)) if row is not None else ("", "")

    def _update_sessions(self, session: Session, batch: list[Record]) -> None:
        starts: list[dict[str, Any]] = []
        counts: dict[str, list[int]] = {}
        ends: list[SessionEnd] = []
        for record in batch:
            if isinstance(record, SessionRecord):
                p = record.principal
                starts.append(
                    {
                        "id": storable_text(record.id),
                        "protocol": storable_text(record.protocol),
                        "principal": storable_text(p.name),
                        "principal_kind": str(p.kind),
                        "sponsor": storable_text(p.sponsor) if p.sponsor else p.sponsor,
                        "connection": storable_text(record.connection),
                        "client_addr": storable_text(record.client_addr),
                        "application_name": storable_text(record.application_name),
                        "tls": record.tls,
                        "started_at": record.started_at,
                        "status": "active",
                        "action_count": 0,
                        "blocked_count": 0,
                        "gateway": record.gateway,
                    }
                )
            elif isinstance(record, ActionRecord):
                c = counts.setdefault(record.session_id, [0, 0])
                c[0] += 1
                c[1] += record.status == "blocked"
            elif isinstance(record, SessionEnd):
                ends.append(record)
        # One executemany per kind of change, through Core: an ORM UPDATE per session
        # cost the recorder more than the rest of the batch (issue 20: per connection,
        # the session's end was the recorder's largest cost).
        conn = session.connection()
        if starts:
            # DO NOTHING: a batch retried after a commit whose acknowledgement was lost
            # must not fail forever on the primary key.
            stmt = self._store.insert(SessionRow).on_conflict_do_nothing(index_elements=["id"])
            conn.execute(stmt, starts)
        if counts:
            conn.execute(
                _COUNT_ACTIONS,
                [
                    {"b_id": storable_text(sid), "b_actions": actions, "b_blocked": blocked}
                    for sid, (actions, blocked) in counts.items()
                ],
            )
        if ends:
            conn.execute(
                _END_SESSION,
                [
                    {
                        "b_id": storable_text(end.session_id),
                        "b_ended_at": end.ended_at,
                        "b_status": storable_text(end.status),
                        "b_error": storable_text(end.error) if end.error is not None else None,
                    }
                    for end in ends
                ],
            )


# Executed on the batch's Connection (Core executemany), not through the Session.
_COUNT_ACTIONS = (
    update(SessionRow)
    .where(SessionRow.id == bindparam("b_id"))
    .values(
        action_count=SessionRow.action_count + bindparam("b_actions"),
        blocked_count=SessionRow.blocked_count + bindparam("b_blocked"),
    )
)
_END_SESSION = (
    update(SessionRow)
    .where(SessionRow.id == bindparam("b_id"))
    .values(
        ended_at=bindparam("b_ended_at"),
        status=bindparam("b_status"),
        error=bindparam("b_error"),
    )
)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _read_frame(stream: Any) -> bytes | None:
    header = stream.read(4)
    if len(header) < 4:
        return None
    size = int.from_bytes(header, "big")
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes is too large")
    data = stream.read(size)
    return data if len(data) == size else None


def main() -> int:
    """The recorder process: see the module docstring."""
    setup_logging()
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but acknowledgements may reach the parent's pipe
    url = _read_frame(inp)
    if url is None:
        return 1
    store = Store(url.decode())
    writer = BatchWriter(store)
    try:
        while (frame := _read_frame(inp)) is not None:
            try:
                writer.write(pickle.loads(frame))
            except Exception as exc:  # noqa: BLE001 - reported to the parent, which retries
                out.write(f"error {describe_error(exc)}".replace("\n", " ").encode() + b"\n")
            else:
                out.write(b"ok\n")
            out.flush()
    finally:
        store.dispose()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("WARDGATE_LOG_LEVEL", "WARNING")
    sys.exit(main())
