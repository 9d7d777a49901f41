"""The session recorder: every session and action, written to the hash chain off the loop.

Protocols call ``submit()`` from asyncio callbacks, so it only appends to a deque and
wakes the writer task. The writer takes up to ``batch`` records at a time and has a
`BatchWriter` write them in one store transaction (chain events + the ``sessions``
summary): in a worker thread, or with ``process=True`` in a separate recorder process
(see ``audit.writer``), which keeps that work off the gateway's GIL.

Nothing is ever dropped. A record leaves the queue only after its transaction committed;
a failed write is retried with backoff while the records stay queued (a recorder process
that died is started again). The queue is kept bounded by back-pressure instead: once
the backlog reaches ``high_water``, ``congested`` turns True and the proxy stops reading
from clients until an ``on_drained`` callback says the backlog fell below half of it.

A store that refuses writes is different: waiting would hang every client with no
answer. While writes fail and the backlog is at ``high_water``, ``unavailable`` is True:
the protocols refuse new actions and sessions with a clear error (AUDIT_UNAVAILABLE)
instead of running them unrecorded or pausing, and the ``on_drained`` callbacks fire so
paused clients get that answer. One log line per change of state; the first successful
write ends it, with nothing lost (the records stayed queued).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import pickle
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from wardgate.audit.journal import Journal
from wardgate.audit.oplog import note_record
from wardgate.audit.records import ActionRecord, Record, SessionEnd, SessionRecord
from wardgate.audit.writer import BatchWriter
from wardgate.store.db import Store, describe_error

log = logging.getLogger(__name__)

_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 5.0


class RecorderProcessError(Exception):
    """The recorder process refused a batch, or died; the batch stays queued."""


class _RecorderProcess:
    """The parent's end of ``python -m wardgate.audit.writer``."""

    def __init__(self, store: Store) -> None:
        self._url = store.url.render_as_string(hide_password=False).encode()
        self._proc: asyncio.subprocess.Process | None = None

    async def _ensure(self) -> asyncio.subprocess.Process:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            return proc
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "wardgate.audit.writer",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdin is not None
        # The URL (it may hold a password) goes down the pipe, never into argv or env.
        proc.stdin.write(_frame(self._url))
        self._proc = proc
        return proc

    async def write(self, batch: list[Record]) -> None:
        proc = await self._ensure()
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(_frame(pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)))
            await proc.stdin.drain()
            line = await proc.stdout.readline()
        except (BrokenPipeError, ConnectionResetError):
            line = b""
        if line == b"ok\n":
            return
        if line.startswith(b"error "):
            raise RecorderProcessError(line[6:].decode(errors="replace").strip())
        await self._stop(kill=True)
        raise RecorderProcessError("the recorder process exited; starting a new one")

    async def close(self) -> None:
        await self._stop(kill=False)

    async def kill(self) -> None:
        await self._stop(kill=True)

    async def _stop(self, *, kill: bool) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        if kill:
            proc.kill()
        elif proc.stdin is not None:
            proc.stdin.close()  # it finishes its batch and exits at end of input
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except (TimeoutError, asyncio.CancelledError):
            proc.kill()
            raise


def _frame(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


class RecordWatcher(Protocol):
    """Who watches the records go by (metrics.RecordObserver): told of each submit and
    of the backlog; it never holds a record up."""

    def submitted(self, record: Record) -> None: ...

    def backlog(self, depth: int, oldest_age: float) -> None: ...

    def store_state(self, writable: bool, refusing: bool) -> None: ...

    def refused(self) -> None: ...


class _Unwatched:
    def submitted(self, record: Record) -> None:
        pass

    def backlog(self, depth: int, oldest_age: float) -> None:
        pass

    def store_state(self, writable: bool, refusing: bool) -> None:
        pass

    def refused(self) -> None:
        pass


class Recorder:
    def __init__(
        self,
        store: Store,
        *,
        high_water: int = 10_000,
        batch: int = 500,
        linger: float = 0.05,
        process: bool = False,
        observer: RecordWatcher | None = None,
        gateway: str | None = None,
        journal: Journal | None = None,
    ) -> None:
        if high_water < 2 or batch < 1:
            raise ValueError("high_water must be >= 2 and batch >= 1")
        self._writer = BatchWriter(store)
        # Stamped on every SessionRecord: a restart after a crash finds its own sessions.
        self._gateway = gateway
        self._process = _RecorderProcess(store) if process else None
        self._high_water = high_water
        self._batch = batch
        # Wait this long for a batch to fill: one commit (and fsync) per batch instead of
        # per statement, and far less time in the writer thread competing for the GIL.
        self._linger = linger
        self._queue: deque[Record] = deque()
        self._queued_at: deque[float] = deque()  # monotonic submit times: the lag metric
        self.observer: RecordWatcher = observer if observer is not None else _Unwatched()
        self._submitted = 0
        self._written = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._drained_callbacks: list[Callable[[], None]] = []
        self._flush_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failing: str | None = None  # why the last write failed; None: it succeeded
        self._refusing = False
        # The local journal (audit.journal): each queued record's position in it, and the
        # intents of forwarded statements whose outcome is not in the store yet.
        self._journal = journal
        self._positions: deque[int] = deque()
        self._intents: dict[tuple[str, int], tuple[int, ActionRecord]] = {}
        self._flush_scheduled = False
        self._journal_failing: str | None = None

    # -- loop side -------------------------------------------------------------------

    @property
    def backlog(self) -> int:
        """Records submitted but not yet committed (queued or being written)."""
        return self._submitted - self._written

    @property
    def congested(self) -> bool:
        return self._submitted - self._written >= self._high_water  # backlog, inlined

    @property
    def unavailable(self) -> bool:
        """Writes to the store fail and the backlog is full: refuse what would need a
        record (a new action, a new session) rather than run it unrecorded or wait."""
        return (self._failing is not None and self.congested) or self._journal_failing is not None

    def refused(self) -> None:
        """An action or session was refused because it could not be recorded."""
        self.observer.refused()

    @property
    def problem(self) -> str | None:
        """For /readyz: why this process's records are not reaching the store, or None."""
        if self._journal_failing is not None:
            return (
                "the audit journal cannot be written: new actions and sessions are refused: "
                f"{self._journal_failing}"
            )
        if self._failing is None:
            return None
        if self.unavailable:
            return (
                f"the audit store is unavailable ({self.backlog} records queued): new actions "
                f"and sessions are refused: {self._failing}"
            )
        return (
            f"audit store writes fail ({self.backlog} records queued; actions are refused at "
            f"{self._high_water}): {self._failing}"
        )

    def submit(self, record: Record) -> None:
        if self._closing:
            raise RuntimeError("the recorder is closed; records submitted now would be lost")
        if self._gateway is not None and isinstance(record, SessionRecord):
            record = dataclasses.replace(record, gateway=self._gateway)
        if self._journal is not None:
            journal = self._journal
            if (
                isinstance(record, ActionRecord)
                and (record.session_id, record.seq) in self._intents
            ):
                position = journal.append_outcome(record)  # the rest is in its intent
            else:
                position = journal.append(record)
            self._positions.append(position)
            if journal.spilled:  # a full disk kept it out of the journal file
                self._flush_journal()
        self._queue.append(record)
        self._queued_at.append(time.monotonic())
        self._submitted += 1
        self.observer.submitted(record)
        note_record(record)  # sign-ins and refusals, at INFO for the operator
        if self._wake is not None:
            self._wake.set()

    def intend(self, record: ActionRecord) -> None:
        """Before a statement is forwarded: journal the record it gets if its outcome
        never comes back (status interrupted), and have it in the kernel on return."""
        journal = self._journal
        if journal is None:
            return
        position = journal.append_intent(record)
        self._intents[record.session_id, record.seq] = (position, record)
        if journal.spilled or self._journal_failing is not None:
            self._flush_journal()

    def _flush_journal(self) -> None:
        """Retry what a full disk kept out of the journal; report each change of state."""
        assert self._journal is not None
        try:
            self._journal.flush()
            self._journal.keep_room()
        except OSError as exc:
            if self._journal_failing is None:
                log.error(
                    "audit journal write failed: refusing new actions and sessions until it "
                    "can be written (records stay queued for the store): %s",
                    exc,
                )
                self.observer.store_state(self._failing is None, True)
            self._journal_failing = str(exc)
            if self._loop is not None and not self._flush_scheduled:
                self._flush_scheduled = True  # retry: a full disk may get space again
                self._loop.call_later(0.5, self._retry_journal)
            return
        if self._journal_failing is not None:
            log.warning("audit journal writable again; accepting actions again")
            self._journal_failing = None
            self.observer.store_state(self._failing is None, self._refusing)

    def _retry_journal(self) -> None:
        self._flush_scheduled = False
        self._flush_journal()

    def _journal_committed(self, batch: list[Record]) -> None:
        """After a store commit: move the journal's checkpoint past what the store has."""
        journal = self._journal
        assert journal is not None
        intents = self._intents
        for record in batch:
            if isinstance(record, ActionRecord):
                intents.pop((record.session_id, record.seq), None)
            elif isinstance(record, SessionEnd) and intents:
                for key in [k for k in intents if k[0] == record.session_id]:
                    del intents[key]
        if journal.full:
            try:
                moved = journal.rotate([i for _, i in intents.values()])
            except OSError as exc:
                log.warning("audit journal rotation failed: %s", exc)
            else:
                self._intents = {
                    key: (pos, i) for (key, (_, i)), pos in zip(intents.items(), moved, strict=True)
                }
                intents = self._intents
        first_record = self._positions[0] if self._positions else journal.end
        first_intent = next(iter(intents.values()))[0] if intents else journal.end
        journal.watch_syncer()
        self._flush_journal()  # and keep room for the statements judged meanwhile
        try:
            journal.set_checkpoint(min(first_record, first_intent))
            journal.drop_obsolete()
        except OSError as exc:
            log.warning("audit journal checkpoint failed: %s", exc)

    def on_drained(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, on the loop, when the backlog is below high_water / 2,
        or when the recorder turns `unavailable` (a paused client then gets its refusal)."""
        if (self.backlog < self._high_water // 2 or self.unavailable) and self._loop is not None:
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
            if self._process is not None:
                await self._process.kill()
            raise
        if self._process is not None:
            await self._process.close()

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
                if self._process is not None:
                    await self._process.write(batch)
                else:
                    await asyncio.to_thread(self._writer.write, batch)
            except Exception as exc:
                reason = describe_error(exc)
                log.debug("audit write failed (retrying in %.2fs): %s", delay, reason)
                self._failed(reason)
                self._report_backlog()
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX)
                continue
            delay = _BACKOFF_FIRST
            if self._failing is not None:
                self._recovered()
            for _ in batch:
                self._queue.popleft()
                self._queued_at.popleft()
            if self._journal is not None:
                for _ in batch:
                    self._positions.popleft()
                self._journal_committed(batch)
            self._written += len(batch)
            self._report_backlog()
            self._after_write()

    def _failed(self, reason: str) -> None:
        """A write failed: log and report each change of state once, not every retry."""
        if self._failing is None:
            log.warning(
                "audit store write failed; %d records kept queued, retrying (actions are "
                "refused once %d are queued): %s",
                self.backlog,
                self._high_water,
                reason,
            )
        self._failing = reason
        if self.unavailable and not self._refusing:
            self._refusing = True
            log.error(
                "audit store unavailable with %d records queued: refusing new actions and "
                "sessions until it accepts writes again: %s",
                self.backlog,
                reason,
            )
            self._release_paused()
        self.observer.store_state(False, self._refusing)

    def _recovered(self) -> None:
        log.warning(
            "audit store writable again; %d records still queued, none lost%s",
            self.backlog,
            "; accepting actions again" if self._refusing else "",
        )
        self._failing = None
        self._refusing = False
        self.observer.store_state(True, False)

    def _release_paused(self) -> None:
        callbacks, self._drained_callbacks = self._drained_callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("on_drained callback failed")

    def _report_backlog(self) -> None:
        oldest = time.monotonic() - self._queued_at[0] if self._queued_at else 0.0
        self.observer.backlog(self.backlog, oldest)

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
            self._release_paused()
