"""The local audit journal: every record reaches a file of this worker before it counts.

Why: the recorder commits to the store in batches, behind the traffic. Without this, a
gateway killed between a statement running and its batch committing loses the record
(issue 21 measured up to 5% of a pgbench run). With it, each record, and before a
statement is forwarded its *intent* (the action record it will have if no result ever
comes back, status ``interrupted``), is appended with ``write(2)`` on the event loop
before the gateway goes on. From that moment the record is in the kernel: killing the
gateway (kill -9, an OOM kill, a crash) cannot lose it. A child process (a thread
outside ``wardgate serve``) ``fdatasync``s the file
in groups (group commit: whatever was written while the last sync ran goes in the
next), so after a power loss or kernel crash at most the last sync interval is lost
(about a millisecond under load; docs/architecture.md says exactly what holds).

The recorder tells the journal how far the store has everything (``checkpoint``): the
position of the oldest record not yet committed, or of the oldest intent whose outcome
is not committed, whichever comes first. The next start of the gateway replays what
lies after the checkpoint into the store (``replay``) before any worker runs: the
records, and for an intent without its outcome, the intent itself. Replay is
at-least-once (a batch that committed just before the crash, before its checkpoint was
written, is written again), like the recorder's retries.

Files: ``<dir>/<start>.wal``, where start is the logical position (bytes since the
journal began) of the file's first frame; ``<dir>/checkpoint`` holds a logical
position. A frame is a 4-byte length, a 4-byte CRC-32 and a pickled record. When the
current file is past ``rotate_bytes`` a new one starts, the open intents are copied into
it, and files wholly before the checkpoint are deleted: the journal holds about what
the store does not have yet, never the whole history.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import operator
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from wardgate.actions import Action, Verdict
from wardgate.audit.records import ActionRecord, Record
from wardgate.identity.principals import Principal
from wardgate.pickling import positional_pickle

log = logging.getLogger(__name__)

_HEADER = struct.Struct("!II")  # length, crc32
_CHECKPOINT = struct.Struct("!Q")
_SUFFIX = ".wal"
_MAX_FRAME = 64 * 1024 * 1024
_SYNC_POLL = 0.001


@positional_pickle
@dataclass(frozen=True, slots=True)
class Intent:
    """A statement about to be forwarded: ``record`` is what the store gets if its
    outcome never arrives (status ``interrupted``)."""

    record: ActionRecord

    @property
    def key(self) -> tuple[str, int]:
        return self.record.session_id, self.record.seq


@positional_pickle
@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of a statement whose `Intent` is in the journal: only what the intent
    does not already hold (a statement's text, parameters and verdict are written once)."""

    session_id: str
    seq: int
    status: str
    duration_ms: float
    rows: int | None
    command: str | None
    error: str | None
    sqlstate: str | None
    trace_id: str | None
    output: str | None

    @classmethod
    def of(cls, r: ActionRecord) -> Outcome:
        return cls(
            r.session_id,
            r.seq,
            r.status,
            r.duration_ms,
            r.rows,
            r.command,
            r.error,
            r.sqlstate,
            r.trace_id,
            r.output,
        )

    def apply(self, intended: ActionRecord) -> ActionRecord:
        return dataclasses.replace(
            intended,
            status=self.status,
            duration_ms=self.duration_ms,
            rows=self.rows,
            command=self.command,
            error=self.error,
            sqlstate=self.sqlstate,
            trace_id=self.trace_id,
            output=self.output,
        )


@dataclass(frozen=True, slots=True)
class _Def:
    """A shared object (a principal, a verdict) that later frames of the same file name
    by number instead of pickling it again: most of what a record holds."""

    number: int
    obj: object


# Filled while a file is replayed (one thread, at start): the `_Def`s read so far.
_replay_defs: dict[int, object] = {}


def _shared(number: int) -> object:
    return _replay_defs[number]


_SHARED_TYPES = (Principal, Verdict)
_MAX_DEFS = 4096

Entry = Record | Intent | Outcome

# Intents and outcomes, one each per statement, go as plain tuples: pickling a tuple of
# strings and numbers is C all the way, several times cheaper than a dataclass's
# __reduce__ (bench/hot_path_costs.py).
_ACTION_FIELDS = operator.attrgetter(*(f.name for f in dataclasses.fields(Action)))
_RECORD_FIELDS = operator.attrgetter(
    "session_id", "seq", "started_at", "duration_ms", "status", "rows", "command", "error",
    "sqlstate", "trace_id", "output",
)  # fmt: skip
_OUTCOME_FIELDS = operator.attrgetter(*(f.name for f in dataclasses.fields(Outcome)))


def _encode(entry: Entry) -> object:
    if type(entry) is Intent:
        r = entry.record
        return ("i", _ACTION_FIELDS(r.action), r.verdict, *_RECORD_FIELDS(r))
    if type(entry) is Outcome:
        return ("o", *_OUTCOME_FIELDS(entry))
    return entry


def _decode(value: object) -> Entry | _Def:
    if type(value) is not tuple:
        return value  # type: ignore[return-value]
    if value[0] == "o":
        return Outcome(*value[1:])
    action, verdict, sid, seq, started, duration, status, rows, command, error, sqlstate = value[
        1:12
    ]
    return Intent(
        ActionRecord(
            sid, seq, Action(*action), verdict, started, duration, status, rows, command,
            error, sqlstate, *value[12:],
        )
    )  # fmt: skip


class Journal:
    def __init__(
        self,
        directory: Path,
        *,
        rotate_bytes: int = 16 * 1024 * 1024,
        sync_process: bool = False,
    ) -> None:
        self.directory = directory
        # Sync from a child process (`wardgate serve`): a thread of the gateway would
        # take the GIL back after every fdatasync, stalling the event loop.
        self._sync_process = sync_process
        self._syncer: subprocess.Popen[bytes] | None = None
        self._rotate = rotate_bytes
        self._fd = -1
        self._start = 0  # logical position of the current file's first byte
        self._end = 0  # logical position after the last frame written
        self._checkpoint = 0
        self._next_def = 0
        self._buf = bytearray()
        self._ckpt_fd = -1
        self._lock = threading.Lock()  # the current fd, against the sync thread
        self._dirty = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._synced = 0  # logical position known to be on disk
        self._written = 0  # logical position handed to write(2)
        self.sync_error: OSError | None = None
        # One pickler for every frame: principals and verdicts go once per file as a
        # `_Def`, then by number (dispatch_table is consulted only for those types).
        self._out = io.BytesIO()
        self._pickler = pickle.Pickler(self._out, protocol=pickle.HIGHEST_PROTOCOL)
        self._pickler.dispatch_table = {t: self._reduce_shared for t in _SHARED_TYPES}
        self._defs: dict[int, tuple[int, object]] = {}  # id(obj) -> (number, obj)

    # -- opening and closing ------------------------------------------------------------

    def open(self) -> None:
        """Start a fresh journal in ``directory`` (replay whatever was there first)."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        start = max((e for _, e in _files(self.directory)), default=0)
        self._ckpt_fd = os.open(self.directory / "checkpoint", os.O_RDWR | os.O_CREAT, 0o600)
        self._open_file(start)
        self._written = self._synced = self._end
        self._write_checkpoint(start)
        if self._sync_process:
            self._syncer = subprocess.Popen(
                [sys.executable, "-m", "wardgate.audit.journal", str(self.directory)],
                stdin=subprocess.DEVNULL,
            )
            return
        self._thread = threading.Thread(target=self._sync_loop, name="journal-sync", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Sync and close; called after the recorder wrote everything (or gave up)."""
        self._stopping = True
        self._dirty.set()
        if self._thread is not None:
            self._thread.join(10)
        if self._syncer is not None:
            self._syncer.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._syncer.wait(5)
        with contextlib.suppress(OSError):
            self.flush()
        with self._lock:
            if self._fd >= 0:
                with contextlib.suppress(OSError):
                    os.fdatasync(self._fd)
                os.close(self._fd)
                self._fd = -1
        if self._ckpt_fd >= 0:
            os.close(self._ckpt_fd)
            self._ckpt_fd = -1

    # -- the loop side ------------------------------------------------------------------

    @property
    def end(self) -> int:
        return self._end

    @property
    def full(self) -> bool:
        return self._end - self._start >= self._rotate

    def append(self, entry: Entry) -> int:
        """Add one entry to the write buffer; returns its logical position. It is in
        the kernel (safe from a crash of the gateway) once `flush` returns."""
        out = self._out
        out.seek(0)
        out.truncate()
        self._pickler.clear_memo()
        self._pickler.dump(_encode(entry))  # may add `_Def` frames first (_reduce_shared)
        return self._frame(out.getvalue())

    def append_outcome(self, record: ActionRecord) -> int:
        """`append(Outcome.of(record))`, without building the Outcome."""
        out = self._out
        out.seek(0)
        out.truncate()
        self._pickler.clear_memo()
        self._pickler.dump(
            ("o", record.session_id, record.seq, record.status, record.duration_ms,
             record.rows, record.command, record.error, record.sqlstate, record.trace_id,
             record.output)
        )  # fmt: skip
        return self._frame(out.getvalue())

    def _frame(self, data: bytes) -> int:
        position = self._end
        self._buf += _HEADER.pack(len(data), zlib.crc32(data))
        self._buf += data
        self._end += _HEADER.size + len(data)
        return position

    def _reduce_shared(self, obj: object) -> tuple[Callable[[int], object], tuple[int]]:
        known = self._defs.get(id(obj))
        if known is None or known[1] is not obj:
            if len(self._defs) >= _MAX_DEFS:
                self._defs.clear()  # numbers stay valid in the file; only new ones follow
            number = self._next_def
            self._next_def += 1
            self._defs[id(obj)] = (number, obj)
            self._frame(pickle.dumps(_Def(number, obj), protocol=pickle.HIGHEST_PROTOCOL))
        else:
            number = known[0]
        return _shared, (number,)

    def flush(self) -> None:
        """write(2) what `append` buffered. Raises OSError (a full disk: the buffer is
        kept, and written by the next flush that succeeds)."""
        buf = self._buf
        while buf:
            written = os.write(self._fd, buf)
            del buf[:written]
        self._written = self._end

    def set_checkpoint(self, position: int) -> None:
        """Everything before ``position`` is in the store (or in a later frame)."""
        if position > self._checkpoint:
            self._write_checkpoint(position)

    def rotate(self, open_intents: list[Intent]) -> list[int]:
        """Start a new file and copy ``open_intents`` into it; returns their positions
        there. Call `set_checkpoint` with them, then `drop_obsolete`."""
        self.flush()
        with self._lock:
            with contextlib.suppress(OSError):  # the old file's tail, before it is closed
                os.fdatasync(self._fd)
            os.close(self._fd)
            self._open_file(self._end)
            self._synced = self._written
        moved = [self.append(intent) for intent in open_intents]
        self.flush()
        return moved

    def drop_obsolete(self) -> None:
        """Delete the files wholly before the checkpoint."""
        for start, end in _files(self.directory):
            if end <= self._checkpoint and start != self._start:
                with contextlib.suppress(FileNotFoundError):
                    (self.directory / f"{start:016x}{_SUFFIX}").unlink()

    def _open_file(self, start: int) -> None:
        self._defs.clear()  # each file defines its own shared objects
        self._next_def = 0
        path = self.directory / f"{start:016x}{_SUFFIX}"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._start = self._end = start + os.fstat(self._fd).st_size

    def _write_checkpoint(self, position: int) -> None:
        self._checkpoint = position
        os.pwrite(self._ckpt_fd, _CHECKPOINT.pack(position), 0)

    # -- the sync thread ----------------------------------------------------------------

    def _sync_loop(self) -> None:
        # Polls instead of being woken per write: waking a thread costs the event loop
        # more than this check does, and a sync takes about a millisecond anyway.
        while not self._stopping:
            if self._written <= self._synced:
                self._dirty.wait(_SYNC_POLL)
                continue
            with self._lock:
                if self._fd < 0:
                    return
                end = self._written
                try:
                    os.fdatasync(self._fd)
                except OSError as exc:
                    if self.sync_error is None:
                        log.error("audit journal: fdatasync failed: %s", exc)
                    self.sync_error = exc
                    continue
            self._synced = end


def _files(directory: Path) -> list[tuple[int, int]]:
    """(start, end) logical positions of the journal files, oldest first."""
    out = []
    for path in directory.glob(f"*{_SUFFIX}"):
        with contextlib.suppress(ValueError, FileNotFoundError):
            start = int(path.stem, 16)
            out.append((start, start + path.stat().st_size))
    return sorted(out)


def _read_checkpoint(directory: Path) -> int:
    try:
        data = (directory / "checkpoint").read_bytes()
    except FileNotFoundError:
        return 0
    return _CHECKPOINT.unpack(data[:8])[0] if len(data) >= 8 else 0


def _frames(directory: Path) -> Iterator[tuple[int, Entry]]:
    """Every entry with its logical position, shared objects resolved; a torn or
    corrupt frame (a power loss mid-write) ends its file."""
    for start, _ in _files(directory):
        data = (directory / f"{start:016x}{_SUFFIX}").read_bytes()
        _replay_defs.clear()
        pos = 0
        while pos + _HEADER.size <= len(data):
            length, crc = _HEADER.unpack_from(data, pos)
            body = data[pos + _HEADER.size : pos + _HEADER.size + length]
            if length > _MAX_FRAME or len(body) < length or zlib.crc32(body) != crc:
                log.warning("audit journal %s: torn frame at byte %d ignored", start, pos)
                break
            entry = _decode(pickle.loads(body))
            if isinstance(entry, _Def):
                _replay_defs[entry.number] = entry.obj
            else:
                yield start + pos, entry
            pos += _HEADER.size + length
    _replay_defs.clear()


def pending(directory: Path) -> list[Record]:
    """What a journal holds that the store may not: its records after the checkpoint, in
    order, then each intent after the checkpoint whose outcome is nowhere in the journal
    (an outcome is written after its intent, and a file goes only when everything in it
    is before the checkpoint, so an intent's outcome, if written, is still there; an
    intent copied by a rotation may follow its outcome)."""
    if not directory.is_dir():
        return []
    since = _read_checkpoint(directory)
    records: list[Record] = []
    intents: dict[tuple[str, int], Intent] = {}
    lookup: dict[tuple[str, int], Intent] = {}  # every intent, for its outcome
    done: set[tuple[str, int]] = set()
    for position, entry in _frames(directory):
        if isinstance(entry, Intent):
            lookup[entry.key] = entry
            if position >= since:
                intents[entry.key] = entry  # unanswered at the crash unless done below
            continue
        if isinstance(entry, Outcome | ActionRecord):
            key = (entry.session_id, entry.seq)
            done.add(key)
            if isinstance(entry, Outcome):
                intent = lookup.get(key)
                if intent is None:
                    log.warning("audit journal: an outcome without its intent: %s", key)
                    continue
                entry = entry.apply(intent.record)
        if position >= since:
            records.append(entry)
    records += [i.record for key, i in intents.items() if key not in done]
    return records


def discard(directory: Path) -> None:
    """Remove a journal whose records are all in the store."""
    for path in [*directory.glob(f"*{_SUFFIX}"), directory / "checkpoint"]:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _sync_main(directory: Path) -> None:
    """The sync process: fdatasync the newest journal file whenever it grew, about
    every millisecond, until the gateway worker that started it is gone. A new file (a
    rotation, which syncs the old one itself) is noticed within 50 ms."""
    parent = os.getppid()
    # Below the gateway and the database in CPU priority: on a busy machine a sync may
    # wait a little longer, the traffic does not wait for it.
    with contextlib.suppress(OSError):
        os.nice(10)
    fd, name, synced, scanned = -1, "", -1, 0.0
    while os.getppid() == parent:
        now = time.monotonic()
        if fd < 0 or now - scanned > 0.05:
            scanned = now
            files = _files(directory)
            newest = f"{files[-1][0]:016x}{_SUFFIX}" if files else ""
            if newest and newest != name:
                with contextlib.suppress(FileNotFoundError):
                    new_fd = os.open(directory / newest, os.O_RDONLY)
                    if fd >= 0:
                        os.close(fd)
                    fd, name, synced = new_fd, newest, -1
        if fd < 0:
            time.sleep(_SYNC_POLL)
            continue
        size = os.fstat(fd).st_size
        if size == synced:
            time.sleep(_SYNC_POLL)
            continue
        try:
            os.fdatasync(fd)
        except OSError as exc:
            log.error("audit journal: fdatasync failed: %s", exc)
            time.sleep(0.1)
            continue
        synced = size
        # Groups of about a millisecond at least, however fast the disk syncs.
        if (spent := time.monotonic() - now) < _SYNC_POLL:
            time.sleep(_SYNC_POLL - spent)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker ends it (SIGTERM) when done
    _sync_main(Path(sys.argv[1]))
