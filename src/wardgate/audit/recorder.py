"""The session recorder: every session and action, written to the hash chain off the loop.

Protocols call ``submit()`` from asyncio callbacks, so it only appends to a deque and
wakes the writer task. The writer takes up to ``batch`` records at a time and writes them
in one store transaction in a worker thread (chain events + the ``sessions`` summary).

Nothing is ever dropped. A record leaves the queue only after its transaction committed;
a failed write is retried with backoff while the records stay queued. The queue is kept
bounded by back-pressure instead: once the backlog reaches ``high_water``, ``congested``
turns True and the proxy stops reading from clients until an ``on_drained`` callback says
the backlog fell below half of it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections import deque
from collections.abc import Callable
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from wardgate.audit.chain import NewEvent, append_events, storable_text
from wardgate.audit.records import ActionRecord, Record, SessionEnd, SessionRecord
from wardgate.store.db import Store, describe_error
from wardgate.store.models import SessionRow

log = logging.getLogger(__name__)

_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 5.0


class Recorder:
    def __init__(
        self, store: Store, *, high_water: int = 10_000, batch: int = 500, linger: float = 0.05
    ) -> None:
        if high_water < 2 or batch < 1:
            raise ValueError("high_water must be >= 2 and batch >= 1")
        self._store = store
        self._high_water = high_water
        self._batch = batch
        # Wait this long for a batch to fill: one commit (and fsync) per batch instead of
        # per statement, and far less time in the writer thread competing for the GIL.
        self._linger = linger
        self._queue: deque[Record] = deque()
        self._submitted = 0
        self._written = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._drained_callbacks: list[Callable[[], None]] = []
        self._flush_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        # Writer-thread state: (principal, connection) of sessions whose start this
        # recorder wrote, so their end events carry them without a lookup.
        self._open_sessions: dict[str, tuple[str, str]] = {}

    # -- loop side -------------------------------------------------------------------

    @property
    def backlog(self) -> int:
        """Records submitted but not yet committed (queued or being written)."""
        return self._submitted - self._written

    @property
    def congested(self) -> bool:
        return self.backlog >= self._high_water

    def submit(self, record: Record) -> None:
        if self._closing:
            raise RuntimeError("the recorder is closed; records submitted now would be lost")
        self._queue.append(record)
        self._submitted += 1
        if self._wake is not None:
            self._wake.set()

    def on_drained(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, on the loop, when the backlog is below high_water / 2."""
        if self.backlog < self._high_water // 2 and self._loop is not None:
            self._loop.call_soon(callback)
        else:
            self._drained_callbacks.append(callback)

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("the recorder is already started")
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        if self._queue:
            self._wake.set()
        self._task = asyncio.create_task(self._run(), name="wardgate-recorder")

    async def flush(self) -> None:
        """Wait until everything submitted so far is committed (bound it with
        ``asyncio.timeout``: with the store down this waits for the store)."""
        target = self._submitted
        if self._written >= target:
            return
        if self._task is None or self._task.done():
            raise RuntimeError("the recorder is not running")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._flush_waiters.append((target, future))
        await future

    async def close(self) -> None:
        """Write everything still queued, then stop the writer.

        Bound it with ``asyncio.timeout`` at shutdown: if close is cancelled (the store
        is down), the writer is cancelled too and the unwritten backlog is logged.
        """
        self._closing = True
        if self._task is None:
            if self._queue:
                log.error("recorder closed before start: %d records not written", len(self._queue))
            return
        assert self._wake is not None
        self._wake.set()
        try:
            await asyncio.shield(self._task)
        except asyncio.CancelledError:
            self._task.cancel()
            log.error("recorder stopped with %d records not written to the store", self.backlog)
            raise

    # -- writer task -----------------------------------------------------------------

    async def _run(self) -> None:
        assert self._wake is not None
        delay = _BACKOFF_FIRST
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._linger and len(self._queue) < self._batch and not self._closing:
                await asyncio.sleep(self._linger)
            # Peek, don't pop: records leave the queue only once committed.
            batch = list(itertools.islice(self._queue, self._batch))
            try:
                await asyncio.to_thread(self._write_batch, batch)
            except Exception as exc:
                log.warning(
                    "audit write failed (%d records kept queued, retrying in %.2fs): %s",
                    len(batch),
                    delay,
                    describe_error(exc),
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX)
                continue
            delay = _BACKOFF_FIRST
            for _ in batch:
                self._queue.popleft()
            self._written += len(batch)
            self._after_write()

    def _after_write(self) -> None:
        if self._flush_waiters:
            waiting = []
            for target, future in self._flush_waiters:
                if self._written >= target:
                    if not future.done():
                        future.set_result(None)
                else:
                    waiting.append((target, future))
            self._flush_waiters = waiting
        if self._drained_callbacks and self.backlog < self._high_water // 2:
            callbacks, self._drained_callbacks = self._drained_callbacks, []
            for callback in callbacks:
                try:
                    callback()
                except Exception:
                    log.exception("on_drained callback failed")

    # -- writer thread ---------------------------------------------------------------

    def _write_batch(self, batch: list[Record]) -> None:
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
        if isinstance(record, ActionRecord):
            a, v = record.action, record.verdict
            return NewEvent(
                ts=record.started_at,
                type="action",
                session_id=record.session_id,
                principal=a.principal.name,
                connection=a.connection,
                payload={
                    "seq": record.seq,
                    "protocol": a.protocol,
                    "kind": a.kind,
                    "text": a.text,
                    "params": list(a.params),
                    "client_addr": a.client_addr,
                    "principal_kind": str(a.principal.kind),
                    "sponsor": a.principal.sponsor,
                    "verdict": {"decision": str(v.decision), "rule": v.rule, "reason": v.reason},
                    "statements": [
                        {"klass": s.klass, "kinds": list(s.kinds), "error": s.error}
                        for s in v.statements
                    ],
                    "status": record.status,
                    "rows": record.rows,
                    "command": record.command,
                    "duration_ms": _finite(record.duration_ms),
                    "error": record.error,
                    "sqlstate": record.sqlstate,
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
                    }
                )
            elif isinstance(record, ActionRecord):
                c = counts.setdefault(record.session_id, [0, 0])
                c[0] += 1
                c[1] += record.status == "blocked"
            else:
                ends.append(record)
        if starts:
            # DO NOTHING: a batch retried after a commit whose acknowledgement was lost
            # must not fail forever on the primary key.
            stmt = self._store.insert(SessionRow).on_conflict_do_nothing(index_elements=["id"])
            session.execute(stmt, starts)
        for session_id, (actions, blocked) in counts.items():
            session.execute(
                update(SessionRow)
                .where(SessionRow.id == storable_text(session_id))
                .values(
                    action_count=SessionRow.action_count + actions,
                    blocked_count=SessionRow.blocked_count + blocked,
                )
            )
        for end in ends:
            session.execute(
                update(SessionRow)
                .where(SessionRow.id == storable_text(end.session_id))
                .values(
                    ended_at=end.ended_at,
                    status=storable_text(end.status),
                    error=storable_text(end.error) if end.error is not None else None,
                )
            )


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
