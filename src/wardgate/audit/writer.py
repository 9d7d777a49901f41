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

import functools
import hashlib
import logging
import os
import pickle
import sys
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from wardgate.audit.action_json import VerdictParts, action_json
from wardgate.audit.chain import EncodedEvent, NewEvent, append_encoded, encoded, storable_text
from wardgate.audit.records import (
    ActionRecord,
    Record,
    RecordingRecord,
    SessionEnd,
    SessionRecord,
)
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
        # A Core connection, not an ORM Session: nothing here uses the ORM, and every
        # statement but the rare ones (recordings, a restarted process's sessions) is
        # driver SQL built once.
        with self._store.connection() as conn:
            verdicts: dict[int, VerdictParts] = {}
            counts: dict[str, list[int]] = {}
            events: list[EncodedEvent] = []
            for record in batch:
                if isinstance(record, ActionRecord):
                    a = record.action
                    events.append(
                        (
                            record.started_at,
                            "action",
                            storable_text(record.session_id),
                            storable_text(a.principal.name),
                            storable_text(a.connection),
                            action_json(record, verdicts),
                        )
                    )
                    c = counts.get(record.session_id)
                    if c is None:
                        c = counts[record.session_id] = [0, 0]
                    c[0] += 1
                    c[1] += record.status == "blocked"
                else:
                    events.append(encoded(self._event(conn, record, starting)))
            self._update_sessions(conn, batch, counts)
            append_encoded(conn, events)
        for record in batch:
            if isinstance(record, SessionRecord):
                self._open_sessions[record.id] = (record.principal.name, record.connection)
            elif isinstance(record, SessionEnd):
                self._open_sessions.pop(record.session_id, None)

    def _event(
        self,
        conn: Connection,
        record: SessionRecord | SessionEnd | RecordingRecord,
        starting: dict[str, tuple[str, str]],
    ) -> NewEvent:
        """Any event but an action's (action_json): few, so built as a dict."""
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
            return self._recording(conn, record, starting)
        principal, connection = self._session_identity(conn, record.session_id, starting)
        return NewEvent(
            ts=record.ended_at,
            type="session.end",
            session_id=record.session_id,
            principal=principal,
            connection=connection,
            payload={"status": record.status, "error": record.error},
        )

    def _recording(
        self, conn: Connection, record: RecordingRecord, starting: dict[str, tuple[str, str]]
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
        conn.execute(stmt)
        principal, connection = self._session_identity(conn, record.session_id, starting)
        return NewEvent(
            ts=record.started_at,
            type="recording",
            session_id=record.session_id,
            principal=principal,
            connection=connection,
            payload={"seq": record.seq, "sha256": digest, "bytes": len(cast)},
        )

    def _session_identity(
        self, conn: Connection, session_id: str, starting: dict[str, tuple[str, str]]
    ) -> tuple[str, str]:
        known = starting.get(session_id) or self._open_sessions.get(session_id)
        if known is not None:
            return known
        # Started by an earlier recorder (a restarted process).
        row = conn.execute(
            select(SessionRow.principal, SessionRow.connection).where(
                SessionRow.id == storable_text(session_id)
            )
        ).one_or_none()
        return (str(row.principal), str(row.connection)) if row is not None else ("", "")

    def _update_sessions(
        self, conn: Connection, batch: list[Record], counts: dict[str, list[int]]
    ) -> None:
        """``counts``: session id -> [actions, blocked] of the batch's actions.

        One executemany per kind of change, of driver SQL built once: an ORM UPDATE per
        session cost the recorder more than the rest of the batch (issue 20: per
        connection, the session's end was the recorder's largest cost), and Core's
        statement handling still cost more per batch than its rows."""
        starts: list[tuple[Any, ...]] = []
        ends: list[tuple[Any, ...]] = []
        for record in batch:
            if isinstance(record, SessionRecord):
                p = record.principal
                starts.append(
                    (
                        storable_text(record.id),
                        storable_text(record.protocol),
                        storable_text(p.name),
                        str(p.kind),
                        storable_text(p.sponsor) if p.sponsor else p.sponsor,
                        storable_text(record.connection),
                        storable_text(record.client_addr),
                        storable_text(record.application_name),
                        record.tls,
                        record.started_at,
                        "active",
                        0,
                        0,
                        record.gateway,
                    )
                )
            elif isinstance(record, SessionEnd):
                ends.append(
                    (
                        record.ended_at,
                        storable_text(record.status),
                        storable_text(record.error) if record.error is not None else None,
                        storable_text(record.session_id),
                    )
                )
        start_sql, count_sql, end_sql = _sessions_sql(conn.dialect.paramstyle)
        if starts:
            conn.exec_driver_sql(start_sql, starts)
        if counts:
            conn.exec_driver_sql(
                count_sql,
                [
                    (actions, blocked, storable_text(sid))
                    for sid, (actions, blocked) in counts.items()
                ],
            )
        if ends:
            conn.exec_driver_sql(end_sql, ends)


_SESSION_START_COLUMNS = (
    "id", "protocol", "principal", "principal_kind", "sponsor", "connection", "client_addr",
    "application_name", "tls", "started_at", "status", "action_count", "blocked_count",
    "gateway",
)  # fmt: skip


@functools.cache
def _sessions_sql(paramstyle: str) -> tuple[str, str, str]:
    """(insert a started session, add a batch's actions, end a session)."""
    mark = "?" if paramstyle == "qmark" else "%s"  # sqlite3 / psycopg
    table = SessionRow.__tablename__
    return (
        f"INSERT INTO {table} ({', '.join(_SESSION_START_COLUMNS)}) "
        f"VALUES ({', '.join([mark] * len(_SESSION_START_COLUMNS))}) "
        # DO NOTHING: a batch retried after a commit whose acknowledgement was lost
        # must not fail forever on the primary key.
        "ON CONFLICT (id) DO NOTHING",
        f"UPDATE {table} SET action_count = action_count + {mark}, "
        f"blocked_count = blocked_count + {mark} WHERE id = {mark}",
        f"UPDATE {table} SET ended_at = {mark}, status = {mark}, error = {mark} WHERE id = {mark}",
    )


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
