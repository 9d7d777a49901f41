"""A copy of every audit event outside the store: a JSON-lines file and/or syslog.

The copy is made by following the chain (``stream_new``), not by the recorder: every
event is in it whoever appended it (recorder, review service, sign-ins), in id order,
each exactly once, and a restarted gateway resumes after the last event the file holds.
Each line is one event with its hashes and the payload as the exact canonical text
that was hashed, so the file alone is a verifiable chain (``verify_sink_file``), and
``wardgate audit verify --sink FILE`` names each stored event that differs from it.

Signed checkpoints are appended too, as ``{"checkpoint": {...}}`` lines.

The lag is the keeper's interval (``audit.sink.interval``, 1 s by default): an event
is copied within about that long of its commit. Someone who rewrites the store inside
that window rewrites what gets copied; everything older is already outside.
"""

from __future__ import annotations

import bisect
import json
import logging
import logging.handlers
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from wardgate.audit.chain import (
    EVENT_COLUMNS,
    GENESIS_HASH,
    SWEPT_TYPE,
    event_hash,
    swept_runs,
)
from wardgate.store.db import Store
from wardgate.store.models import AuditEvent

log = logging.getLogger(__name__)

PAGE = 1000
_TAIL_BLOCK = 64 * 1024

_COLUMNS = EVENT_COLUMNS


def event_line(row: Any) -> str:
    return json.dumps(
        {
            "id": row.id,
            "ts": row.ts,
            "type": row.type,
            "session_id": row.session_id,
            "principal": row.principal,
            "connection": row.connection,
            "payload": row.payload,
            "prev_hash": row.prev_hash,
            "hash": row.hash,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )


class Sink:
    """Where copies go. Lines are appended whole (one ``write`` per batch on an
    O_APPEND file) and fsynced before the position moves on."""

    def __init__(
        self, path: Path | None, syslog: str | None = None, facility: str = "local0"
    ) -> None:
        self.path = path
        self._syslog = _syslog_handler(syslog, facility) if syslog else None
        self.last_id, self.last_hash = _resume_point(path) if path else (0, GENESIS_HASH)

    def write(self, lines: list[str]) -> None:
        if not lines:
            return
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                data = ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    data = b"\n" + data  # after a line cut by a crash, start a new one
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
        if self._syslog is not None:
            for line in lines:
                self._syslog.emit(
                    logging.LogRecord("wardgate.audit", logging.INFO, "", 0, line, None, None)
                )

    def close(self) -> None:
        if self._syslog is not None:
            self._syslog.close()


def _syslog_handler(address: str, facility: str) -> logging.handlers.SysLogHandler:
    if address.startswith("/"):
        handler = logging.handlers.SysLogHandler(
            address=address, facility=logging.handlers.SysLogHandler.facility_names[facility]
        )
    else:
        scheme, _, rest = address.partition("://")
        host, _, port = rest.rpartition(":")
        handler = logging.handlers.SysLogHandler(
            address=(host.strip("[]"), int(port)),
            facility=logging.handlers.SysLogHandler.facility_names[facility],
            socktype=socket.SOCK_STREAM if scheme == "tcp" else socket.SOCK_DGRAM,
        )
    handler.setFormatter(logging.Formatter("wardgate-audit: %(message)s"))
    return handler


def _resume_point(path: Path) -> tuple[int, str]:
    """(id, hash) of the last event line in the file: where copying goes on."""
    for line in _lines_from_end(path):
        try:
            data = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash mid-write; the event is copied again
        if isinstance(data, dict) and "hash" in data and "id" in data:
            return int(data["id"]), str(data["hash"])
    return 0, GENESIS_HASH


def _lines_from_end(path: Path) -> Iterator[str]:
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return
    with f:
        f.seek(0, os.SEEK_END)
        pos, rest = f.tell(), b""
        while pos > 0:
            step = min(_TAIL_BLOCK, pos)
            pos -= step
            f.seek(pos)
            chunk = f.read(step) + rest
            lines = chunk.split(b"\n")
            rest = lines[0]  # may continue in the previous block
            for raw in reversed(lines[1:]):
                if raw.strip():
                    yield raw.decode("utf-8", "surrogatepass")
        if rest.strip():
            yield rest.decode("utf-8", "surrogatepass")


def stream_new(store: Store, sink: Sink) -> int:
    """Copy every event after the sink's position; returns how many were copied."""
    copied = 0
    while True:
        with store.session(write=False) as session:
            page = session.execute(
                select(*_COLUMNS)
                .where(AuditEvent.id > sink.last_id)
                .order_by(AuditEvent.id)
                .limit(PAGE)
            ).all()
        if not page:
            return copied
        first = page[0]
        if first.prev_hash != sink.last_hash:
            # The store's chain no longer continues the copy: rewritten after it was
            # copied, or restored from an older backup. The copy keeps both versions.
            log.error(
                "audit sink: event %d of the store does not follow event %d as the sink "
                "copied it (prev_hash %s, copied hash %s): the store was rewritten or "
                "restored since; compare with `wardgate audit verify --sink`",
                first.id,
                sink.last_id,
                first.prev_hash[:12],
                sink.last_hash[:12],
            )
        sink.write([event_line(row) for row in page])
        sink.last_id, sink.last_hash = int(page[-1].id), str(page[-1].hash)
        copied += len(page)


# -- reading a sink file back ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SinkEvent:
    id: int
    ts: float
    type: str
    session_id: str
    principal: str
    connection: str
    payload: str
    prev_hash: str
    hash: str


def read_sink(path: Path) -> Iterator[SinkEvent | dict[str, Any]]:
    """Event lines as SinkEvent, checkpoint lines as their dict; unreadable lines are
    skipped with a warning (a crash can cut the last one)."""
    with path.open(encoding="utf-8", errors="surrogateescape") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                if "checkpoint" in data:
                    yield dict(data["checkpoint"])
                    continue
                yield SinkEvent(**{k: data[k] for k in SinkEvent.__slots__})
            except (ValueError, KeyError, TypeError):
                log.warning("%s:%d is not an audit event line; skipped", path, n)


def rehash(ev: SinkEvent) -> str:
    return event_hash(
        ev.prev_hash,
        id=ev.id,
        ts=ev.ts,
        type=ev.type,
        session_id=ev.session_id,
        principal=ev.principal,
        connection=ev.connection,
        payload=ev.payload,
    )


def _sweeps(store: Store) -> list[tuple[int, str, float | None, list[tuple[int, int]]]]:
    """(id, connection, cutoff, [(first, last) ...]) of every retention.swept event."""
    found: list[tuple[int, str, float | None, list[tuple[int, int]]]] = []
    with store.session(write=False) as session:
        rows = session.execute(
            select(AuditEvent.id, AuditEvent.payload).where(AuditEvent.type == SWEPT_TYPE)
        ).all()
    for sweep_id, payload in rows:
        try:
            data = json.loads(payload)
            runs = [(int(first), int(last)) for first, last, _ in data.get("runs", [])]
            before = data.get("before")
            cutoff = float(before) if isinstance(before, int | float) else None
            found.append((int(sweep_id), str(data.get("connection", "")), cutoff, runs))
        except (ValueError, TypeError, AttributeError):
            continue  # an edited sweep event: the chain walk fails at its hash anyway
    return found


def compare_with_store(store: Store, path: Path, limit: int = 20) -> list[str]:
    """Every event the sink file holds whose stored version differs (or is gone), as
    sentences; at most ``limit``. Events in the store after the file's end are not
    compared (not copied yet). Copies of one id that disagree with each other are
    named too: the store changed between the two copies."""
    problems: list[str] = []
    seen: dict[int, str] = {}
    batch: list[SinkEvent] = []
    sweeps = _sweeps(store)
    swept = sorted((first, last) for first, (last, _) in swept_runs(store).items())

    def was_swept(event_id: int) -> bool:  # deleted by retention, and said so in the chain
        i = bisect.bisect_right(swept, (event_id, float("inf"))) - 1
        return i >= 0 and swept[i][0] <= event_id <= swept[i][1]

    def forged_sweep(ev: SinkEvent) -> str | None:
        """Why no real sweep deleted ``ev`` (whose copy the sink holds), or None. A
        retention.swept event is anyone's to append: the copy says whether the event
        was one a sweep deletes (retention.py: not a review, grant or sweep event; the
        sweep's connection; older than its cutoff)."""
        for sweep_id, connection, before, runs in sweeps:
            if not any(first <= ev.id <= last for first, last in runs):
                continue
            named = f"retention.swept event {sweep_id} names it, but"
            if ev.type.startswith(("review.", "grant.")) or ev.type == SWEPT_TYPE:
                return f"{named} a sweep never deletes {ev.type} events"
            if ev.connection != connection:
                return f"{named} it is connection {ev.connection!r}'s, not {connection!r}'s"
            if before is None or not ev.ts < before:
                return f"{named} it is newer than the sweep's cutoff"
            return None
        return "no sweep names it"

    def check(events: list[SinkEvent]) -> None:
        ids = [e.id for e in events]
        with store.session(write=False) as session:
            stored = {
                int(r.id): r
                for r in session.execute(select(*_COLUMNS).where(AuditEvent.id.in_(ids)))
            }
        for ev in events:
            row = stored.get(ev.id)
            if row is None and was_swept(ev.id):
                why = forged_sweep(ev)
                if why is not None:
                    problems.append(
                        f"event {ev.id} ({ev.type}) is in the sink but not in the store; "
                        f"{why}: that sweep event is forged"
                    )
                continue
            if row is None:
                problems.append(f"event {ev.id} ({ev.type}) is in the sink but not in the store")
            elif row.hash != ev.hash or row.payload != ev.payload or row.ts != ev.ts:
                what = "content" if row.payload != ev.payload else "hash"
                problems.append(
                    f"event {ev.id} ({ev.type}, session {ev.session_id}): the store's {what} "
                    "differs from the copy in the sink"
                )

    for item in read_sink(path):
        if not isinstance(item, SinkEvent):
            continue
        if rehash(item) != item.hash:
            problems.append(f"event {item.id}: the sink's own line does not match its hash")
        earlier = seen.get(item.id)
        if earlier is not None and earlier != item.hash:
            problems.append(f"event {item.id} was copied twice with different content")
        seen[item.id] = item.hash
        batch.append(item)
        if len(batch) >= PAGE:
            check(batch)
            batch = []
        if len(problems) >= limit:
            break
    if batch and len(problems) < limit:
        check(batch)
    return problems[:limit]
