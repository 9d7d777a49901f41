"""The local audit journal: every record reaches a file of this worker before it counts.

Why: the recorder commits to the store in batches, behind the traffic. Without this, a
gateway killed between a statement running and its batch committing loses the record
(issue 21 measured up to 5% of a pgbench run). With it, each record, and before a
statement is forwarded its *intent* (the action record it will have if no result ever
comes back, status ``interrupted``), is copied into the journal before the gateway goes
on: into a shared map of the file's *stage* (``<start>.stage``), no system call. From
then on the record is in the kernel's page cache, and killing the gateway (kill -9, an
OOM kill, a crash, every process at once) cannot lose it. A child process (outside
``wardgate serve``) copies what is new from the stage into the file itself
(``<start>.wal``, with ``pwrite``) and ``fdatasync``s that, in groups (group commit:
whatever was written while the last sync ran goes in the next), so after a power loss
or kernel crash at most the last sync interval is lost (about a millisecond under load;
docs/architecture.md says exactly what holds).

Why two files: a ``pwrite`` per entry cost the event loop 5-7 µs (a third of the
journal's cost per statement, bench/relay_cost.py), a copy into a map 0.2 µs. But a
mapped file that is synced gets its pages write-protected by every sync, and the next
copy then faults through the file system, waiting for the page's write-back (about 45
µs on the reference VM, several per millisecond: the first mapped journal). The stage is
never synced: the kernel writes it back in its own time (every 30 s or so, after which
a page the worker is still filling faults once).

The recorder tells the journal how far the store has everything (``checkpoint``): the
position of the oldest record not yet committed, or of the oldest intent whose outcome
is not committed, whichever comes first. The next start of the gateway replays what
lies after the checkpoint into the store (``replay``) before any worker runs: the
records, and for an intent without its outcome, the intent itself. Replay is
at-least-once (a batch that committed just before the crash, before its checkpoint was
written, is written again), like the recorder's retries.

Files: ``<dir>/<start>.wal`` and its stage ``<dir>/<start>.stage`` (the same bytes, the
stage ahead; replay takes whichever holds the longer run of whole frames, and a file
that is closed has its stage copied in, synced, and removed), where start is the
logical position (bytes since the journal began) of the file's first byte;
``<dir>/checkpoint`` holds a logical position. A file starts with a 16-byte head (a magic and 8 reserved bytes), then
frames: a 4-byte length, a 4-byte CRC-32 and a pickled record. Both are written with
zeros ahead (a full disk shows as an error when a file is created or grown, never in
the middle of a statement, and a sync writes only data) and end at the first frame of
length zero. The worker keeps the position it has written (whole frames only) in a
page it shares with the sync process, which syncs when that position moves. When
the current file is past
``rotate_bytes`` a new one starts, the open intents are copied into it, and files wholly
before the checkpoint are deleted: the journal holds about what the store does not have
yet, never the whole history.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import mmap
import operator
import os
import pickle
import signal
import struct
import subprocess
import sys
import tempfile
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
_MAGIC = b"WGJRNL03"
# Files of earlier releases: 02 was written through a map, its second head field counted
# the bytes written; the frames are the same. 01 files have no head.
_MAGICS = (_MAGIC, b"WGJRNL02")
_HEAD = struct.Struct("!8sQ")  # magic, reserved (zero)
_PAGE = 4096
_SUFFIX = ".wal"
_STAGE = ".stage"
_MAX_FRAME = 64 * 1024 * 1024
_SYNC_POLL = 0.001
_SYNCER_RESTART = 1.0  # seconds between two starts of a sync process that keeps dying
_ROTATE_RETRY = 5.0  # seconds after a rotation failed (a full disk) before the next try
# Room kept free in the current file (`flush`): the intents of statements judged before
# the recorder turns unavailable must still fit, so none is forwarded with its intent in
# memory only (a second of pgbench at 8 clients writes about 2 MB; the recorder checks
# after each store commit, every 50 ms or so).
_RESERVE = 256 * 1024
# The page the worker shares with its sync process (a memfd, so never written back and
# never write-protected): the logical start of the current file, the logical position
# up to which whole frames were written, and the position the last sync covered.
_SHARED = struct.Struct("!QQQ")
_SHARED_SIZE = 4096
_SHARED_WRITTEN, _SHARED_SYNCED = 8, 16  # where the last two fields lie (all three: _SHARED)
_POSITION = struct.Struct("!Q")
_FIRST_ALLOCATION = 16 * 1024 * 1024  # a file grows past this only with a larger rotate_bytes
_SLACK = 256 * 1024  # allocated beyond rotate_bytes: the frames of the batch that crosses it


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

# Intents and outcomes, one each per statement, go as plain tuples with the principal and
# the verdict replaced by their `_Def` numbers: ``pickle.dumps`` of a tuple of strings and
# numbers is C all the way, several times cheaper than a dataclass's __reduce__ or a
# pickler's per-type hook (bench/hot_path_costs.py).
_ACTION_REST = operator.attrgetter(*[f.name for f in dataclasses.fields(Action)][1:])
_RECORD_FIELDS = operator.attrgetter(
    "session_id", "seq", "started_at", "duration_ms", "status", "rows", "command", "error",
    "sqlstate", "trace_id", "output",
)  # fmt: skip
_PROTOCOL = pickle.HIGHEST_PROTOCOL


def _decode(value: object) -> Entry | _Def:
    if type(value) is not tuple:
        return value  # type: ignore[return-value]
    if value[0] == "o":
        return Outcome(*value[1:])
    principal, *action = value[1]
    verdict, sid, seq, started, duration, status, rows, command, error, sqlstate = value[2:12]
    if type(principal) is int:  # by number; an earlier release pickled the objects
        principal, verdict = _replay_defs[principal], _replay_defs[verdict]
    return Intent(
        ActionRecord(
            sid, seq, Action(principal, *action), verdict,
            started, duration, status, rows, command, error, sqlstate, *value[12:],
        )
    )  # fmt: skip


class Journal:
    def __init__(
        self,
        directory: Path,
        *,
        rotate_bytes: int = 16 * 1024 * 1024,
        sync_process: bool = False,
        sync_interval: float = _SYNC_POLL,
    ) -> None:
        self.directory = directory
        # Sync from a child process (`wardgate serve`): a thread of the gateway would
        # take the GIL back after every fdatasync, stalling the event loop.
        self._sync_process = sync_process
        self._sync_interval = sync_interval
        self._syncer: subprocess.Popen[bytes] | None = None
        self._shared: mmap.mmap | None = None  # shared with the sync process
        self._shared_fd = -1
        self._syncer_started = 0.0
        # Monotonic time before which neither a rotation nor growth for `keep_room` is
        # tried again (both failed: a full disk).
        self._rotate_after = 0.0
        self._rotate = rotate_bytes
        self._fd = -1  # the current file (.wal): the syncer's copy, synced
        self._stage_fd = -1  # its stage, mapped: where the frames are written
        self._map: mmap.mmap | None = None
        self._capacity = 0  # bytes of the current file allocated (zero-filled)
        self._off = 0  # bytes of the current file written (its head included)
        self._start = 0  # logical position of the current file's first byte
        self._older: list[int] = []  # the starts of the files before the current one
        self._end = 0  # logical position after the last frame appended
        self._checkpoint = 0
        self._next_def = 0
        # Frames that did not fit and could not be allocated room for (a full disk):
        # `flush` copies them in once the file can grow, or raises.
        self._spill = bytearray()
        self._ckpt_fd = -1
        self._lock = threading.Lock()  # the current fd, against the sync thread
        self._dirty = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._synced = 0  # logical position known to be on disk
        self._written = 0  # logical position in the kernel (written)
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
        files = _files(self.directory)
        self._older = [s for s, _ in files]
        start = max((e for _, e in files), default=0)
        self._ckpt_fd = os.open(self.directory / "checkpoint", os.O_RDWR | os.O_CREAT, 0o600)
        self._open_file(start)
        self._written = self._synced = self._end
        self._write_checkpoint(start)
        if self._sync_process:
            self._shared_fd = fd = _shared_fd()  # kept: a new sync process needs it
            os.ftruncate(fd, _SHARED_SIZE)
            self._shared = mmap.mmap(fd, _SHARED_SIZE)
            self._publish_start()
            self._start_syncer()
            return
        self._thread = threading.Thread(target=self._sync_loop, name="journal-sync", daemon=True)
        self._thread.start()

    def _start_syncer(self) -> None:
        self._syncer_started = time.monotonic()
        self._syncer = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "wardgate.audit.journal",
                str(self.directory),
                repr(self._sync_interval),
                str(self._shared_fd),
                str(os.getpid()),
            ],
            stdin=subprocess.DEVNULL,
            pass_fds=(self._shared_fd,),
        )

    def watch_syncer(self) -> None:
        """Start the sync process again if it died (killed, out of memory): without it
        entries still survive a crash of the gateway (they are in the stage) but
        nothing reaches the synced file, so a power loss would take everything since.
        At most one start per `_SYNCER_RESTART` seconds; the recorder calls this after
        every store commit."""
        syncer = self._syncer
        if syncer is None or self._stopping or syncer.poll() is None:
            return
        if time.monotonic() - self._syncer_started < _SYNCER_RESTART:
            return
        log.error(
            "audit journal %s: its sync process exited (status %s); starting a new one. "
            "Until it runs, records survive a crash of the gateway but not a power loss",
            self.directory,
            syncer.returncode,
        )
        self._start_syncer()

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
            self._close_file()
        if self._ckpt_fd >= 0:
            os.close(self._ckpt_fd)
            self._ckpt_fd = -1
        if self._shared is not None:
            self._shared.close()
            self._shared = None
            os.close(self._shared_fd)
            self._shared_fd = -1

    # -- the loop side ------------------------------------------------------------------

    @property
    def end(self) -> int:
        return self._end

    @property
    def full(self) -> bool:
        """Time for `rotate` (not again within `_ROTATE_RETRY` of a failed one)."""
        return self._end - self._start >= self._rotate and time.monotonic() >= self._rotate_after

    @property
    def spilled(self) -> bool:
        """Frames wait for room (a full disk): they are not in the kernel until `flush`
        succeeds."""
        return bool(self._spill)

    def append(self, entry: Entry) -> int:
        """Copy one entry into the journal; returns its logical position. It is in the
        kernel (safe from a crash of the gateway) on return, unless `spilled`."""
        if type(entry) is Intent:
            return self.append_intent(entry.record)
        out = self._out
        out.seek(0)
        out.truncate()
        self._pickler.clear_memo()
        self._pickler.dump(entry)  # may add `_Def` frames first (_reduce_shared)
        return self._frame(out.getvalue())

    def append_intent(self, record: ActionRecord) -> int:
        """`append(Intent(record))`, without building the Intent."""
        action = record.action
        principal = self._number(action.principal)
        verdict = self._number(record.verdict)
        return self._frame(
            pickle.dumps(
                ("i", (principal, *_ACTION_REST(action)), verdict, *_RECORD_FIELDS(record)),
                _PROTOCOL,
            )
        )

    def append_outcome(self, record: ActionRecord) -> int:
        """`append(Outcome.of(record))`, without building the Outcome."""
        return self._frame(
            pickle.dumps(
                ("o", record.session_id, record.seq, record.status, record.duration_ms,
                 record.rows, record.command, record.error, record.sqlstate, record.trace_id,
                 record.output),
                _PROTOCOL,
            )
        )  # fmt: skip

    def _frame(self, data: bytes) -> int:
        position = self._end
        self._end = position + _HEADER.size + len(data)
        self._write(_HEADER.pack(len(data), zlib.crc32(data)) + data)
        return position

    def _write(self, frame: bytes) -> None:
        """Copy ``frame`` (which ends at `_end`) into the stage."""
        size = len(frame)
        off = self._off
        stage = self._map
        if self._spill or stage is None or off + size > self._capacity and not self._grow(size):
            self._spill += frame
            return
        # Into pages the zero-fill allocated: no allocation, so no ENOSPC (or SIGBUS).
        stage[off : off + size] = frame
        self._off = off + size
        self._written = end = self._end
        if self._shared is not None:
            _POSITION.pack_into(self._shared, _SHARED_WRITTEN, end)

    def _grow(self, size: int) -> bool:
        """Room for ``size`` more bytes in the current file; False on a full disk."""
        capacity = _page_round(max(2 * self._capacity, self._off + size + _SLACK))
        if self._map is None:
            return False
        try:
            _zero_fill(self._fd, self._capacity, capacity)
            _zero_fill(self._stage_fd, self._capacity, capacity)
            self._map.resize(capacity)
        except OSError as exc:
            log.debug("audit journal: cannot grow %s: %s", self._name(), exc)
            return False
        self._capacity = capacity
        return True

    def _number(self, obj: object) -> int:
        """The number of a shared object in this file, written as a `_Def` the first time."""
        known = self._defs.get(id(obj))
        if known is not None and known[1] is obj:
            return known[0]
        if len(self._defs) >= _MAX_DEFS:
            self._defs.clear()  # numbers stay valid in the file; only new ones follow
        number = self._next_def
        self._next_def += 1
        self._defs[id(obj)] = (number, obj)
        self._frame(pickle.dumps(_Def(number, obj), _PROTOCOL))
        return number

    def _reduce_shared(self, obj: object) -> tuple[Callable[[int], object], tuple[int]]:
        return _shared, (self._number(obj),)

    def flush(self) -> None:
        """Copy in what a full disk kept out (`spilled`). Raises OSError while there is
        still no room (the frames are kept for the next flush)."""
        spill = self._spill
        if not spill:
            return
        if self._map is None:
            raise OSError(f"the audit journal in {self.directory} is closed")
        if self._off + len(spill) > self._capacity and not self._grow(len(spill)):
            raise OSError(f"no room to grow the audit journal {self._name()}")
        self._map[self._off : self._off + len(spill)] = spill
        self._spill = bytearray()
        self._off += len(spill)
        self._written = self._end
        if self._shared is not None:
            _POSITION.pack_into(self._shared, _SHARED_WRITTEN, self._end)

    def keep_room(self) -> None:
        """Raise OSError when the current file has less than `_RESERVE` bytes free and
        cannot grow. That happens only past the rotation point (a file is allocated
        `_SLACK` beyond it), so when rotations fail: a full disk. The recorder then
        refuses new statements while the ones already judged still fit."""
        if self._map is not None and self._capacity - self._off < _RESERVE:
            if time.monotonic() < self._rotate_after or not self._grow(_RESERVE):
                self._rotate_after = max(self._rotate_after, time.monotonic() + _ROTATE_RETRY)
                raise OSError(
                    f"the audit journal {self._name()} has less than {_RESERVE // 1024} KiB "
                    "of room left and cannot grow (is the disk full?)"
                )

    @property
    def synced(self) -> int:
        """The logical position the sync process's last ``fdatasync`` covered (every
        byte before it is on disk; a rotation syncs the file it closes)."""
        if self._shared is None:
            return self._synced
        return int(_POSITION.unpack_from(self._shared, _SHARED_SYNCED)[0])

    def _publish_start(self) -> None:
        """Tell the sync process which file is current (after `_open_file`)."""
        if self._shared is not None:
            _SHARED.pack_into(self._shared, 0, self._start, self._end, self._end)

    def set_checkpoint(self, position: int) -> None:
        """Everything before ``position`` is in the store (or in a later frame)."""
        if position > self._checkpoint:
            self._write_checkpoint(position)

    def rotate(self, open_intents: list[ActionRecord]) -> list[int]:
        """Start a new file and copy the intents of ``open_intents`` (the records their
        statements get if no outcome comes) into it; returns their positions
        there. Call `set_checkpoint` with them, then `drop_obsolete`."""
        self.flush()
        try:
            # Made before the current file is closed: on a full disk the current file
            # stays current (and is not taken for an older one that may go), and the
            # next rotation is tried `_ROTATE_RETRY` seconds later.
            new = self._create_pair(self._end)
        except OSError:
            self._rotate_after = time.monotonic() + _ROTATE_RETRY
            raise
        with self._lock:
            self._close_file()
            self._older.append(self._start)
            self._adopt(self._end, *new)
            self._synced = self._written
            self._publish_start()
        moved = [self.append_intent(record) for record in open_intents]
        self.flush()
        return moved

    def drop_obsolete(self) -> None:
        """Delete the files wholly before the checkpoint (a file ends where the next
        begins)."""
        ends = [*self._older[1:], self._start]
        while self._older and ends[0] <= self._checkpoint:
            for suffix in (_SUFFIX, _STAGE):
                with contextlib.suppress(FileNotFoundError):
                    (self.directory / f"{self._older[0]:016x}{suffix}").unlink()
            del self._older[0], ends[0]

    def _name(self) -> str:
        return f"{self._start:016x}{_SUFFIX}"

    def _open_file(self, start: int) -> None:
        """A new file whose first byte is logical position ``start`` (none exists there:
        `open` starts after every file, `rotate` after the current one)."""
        self._adopt(start, *self._create_pair(start))

    def _create_pair(self, start: int) -> tuple[int, int, mmap.mmap, int]:
        """A file and its stage at ``start``, allocated and headed, the stage mapped;
        on failure (a full disk) nothing of them is left."""
        capacity = _page_round(min(self._rotate, _FIRST_ALLOCATION) + _SLACK)
        paths = [self.directory / f"{start:016x}{suffix}" for suffix in (_SUFFIX, _STAGE)]
        fds: list[int] = []
        try:
            for path in paths:
                fds.append(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
                _zero_fill(fds[-1], 0, capacity)
                os.pwrite(fds[-1], _HEAD.pack(_MAGIC, 0), 0)
            stage = mmap.mmap(fds[1], capacity)
        except BaseException:
            for fd in fds:
                os.close(fd)
            for path in paths:
                with contextlib.suppress(OSError):
                    path.unlink()
            raise
        return fds[0], fds[1], stage, capacity

    def _adopt(self, start: int, fd: int, stage_fd: int, stage: mmap.mmap, capacity: int) -> None:
        self._defs.clear()  # each file defines its own shared objects
        self._next_def = 0
        self._fd, self._stage_fd, self._map, self._capacity = fd, stage_fd, stage, capacity
        self._off = _HEAD.size
        self._start = start
        self._end = start + _HEAD.size

    def _close_file(self) -> None:
        """Copy in what the sync process has not, trim the unused allocation, sync and
        close the current file; its stage goes once the file holds all of it."""
        if self._fd < 0:
            return
        assert self._map is not None
        try:
            self._copy_in(self.synced, self._start + self._off)
            os.ftruncate(self._fd, self._off)
            os.fdatasync(self._fd)
        except OSError as exc:  # the stage keeps it: replay reads whichever holds more
            log.warning("audit journal: cannot complete %s: %s", self._name(), exc)
        else:
            with contextlib.suppress(FileNotFoundError):
                (self.directory / f"{self._start:016x}{_STAGE}").unlink()
        self._map.close()
        os.close(self._stage_fd)
        os.close(self._fd)
        self._fd = self._stage_fd = -1
        self._map = None

    def _copy_in(self, synced: int, end: int) -> None:
        """Copy the current stage from logical position ``synced`` (the file holds what
        is before it) to ``end`` into the file (the sync process does the same in its
        own process, `_sync_main`)."""
        assert self._map is not None
        at = max(synced - self._start, _HEAD.size)
        os.pwrite(self._fd, self._map[at : end - self._start], at)

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
                if self._fd < 0 or self._map is None:
                    return
                end = self._written
                try:
                    self._copy_in(self._synced, end)
                    os.fdatasync(self._fd)
                except OSError as exc:
                    if self.sync_error is None:
                        log.error("audit journal: fdatasync failed: %s", exc)
                    self.sync_error = exc
                    continue
            self._synced = end


def _shared_fd() -> int:
    """A descriptor for the page shared with the sync process: a memfd (Linux), whose
    pages are never written back; elsewhere an unlinked temporary file."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("wardgate-journal")
    with tempfile.TemporaryFile() as f:
        return os.dup(f.fileno())


_ZEROS = bytes(1024 * 1024)


def _zero_fill(fd: int, start: int, end: int) -> None:
    """Write zeros from ``start`` to ``end``: the blocks are then allocated and written,
    so writing a frame never fails on a full disk, and an ``fdatasync`` has only
    data to write, no extent or size change to commit to the file system's journal (as
    PostgreSQL fills its WAL segments). Raises OSError (ENOSPC) on a full disk."""
    while start < end:
        start += os.pwrite(fd, _ZEROS[: min(len(_ZEROS), end - start)], start)


def _page_round(n: int) -> int:
    return -(-n // _PAGE) * _PAGE


def _files(directory: Path) -> list[tuple[int, int]]:
    """(start, end) logical positions of the journal files, oldest first. A file ends
    where the next begins; the last one at its size (at most: it is allocated ahead)."""
    sizes: dict[int, int] = {}
    for path in [*directory.glob(f"*{_SUFFIX}"), *directory.glob(f"*{_STAGE}")]:
        with contextlib.suppress(ValueError, FileNotFoundError):
            start = int(path.stem, 16)
            sizes[start] = max(sizes.get(start, 0), path.stat().st_size)
    starts = sorted(sizes)
    return [
        (start, starts[i + 1] if i + 1 < len(starts) else start + sizes[start])
        for i, start in enumerate(starts)
    ]


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
        # The file and its stage hold the same bytes, each up to some point (the stage
        # ahead, unless a power loss took pages of it): the longer run of frames wins.
        path, data, frames, torn = max(
            (_whole_frames(directory / f"{start:016x}{suffix}") for suffix in (_SUFFIX, _STAGE)),
            key=lambda found: found[2][-1][1] if found[2] else 0,
        )
        if torn:
            log.warning("audit journal %s: torn frame at byte %d ignored", path.name, torn)
        _replay_defs.clear()
        for pos, end in frames:
            entry = _decode(pickle.loads(data[pos + _HEADER.size : end]))
            if isinstance(entry, _Def):
                _replay_defs[entry.number] = entry.obj
            else:
                yield start + pos, entry
    _replay_defs.clear()


def _whole_frames(path: Path) -> tuple[Path, bytes, list[tuple[int, int]], int]:
    """A file's bytes and where its frames lie, up to the allocated, unwritten rest (a
    length of zero) or the first torn or corrupt frame (a power loss mid-write), whose
    position comes last (0: none)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return path, b"", [], 0
    frames: list[tuple[int, int]] = []
    # A file of an earlier release has no head: its frames start at byte 0.
    pos = _HEAD.size if data.startswith(_MAGICS) else 0
    while pos + _HEADER.size <= len(data):
        length, crc = _HEADER.unpack_from(data, pos)
        if length == 0:
            break
        end = pos + _HEADER.size + length
        if (
            length > _MAX_FRAME
            or end > len(data)
            or zlib.crc32(data[pos + _HEADER.size : end]) != crc
        ):
            return path, data, frames, pos
        frames.append((pos, end))
        pos = end
    return path, data, frames, 0


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
    for path in [
        *directory.glob(f"*{_SUFFIX}"),
        *directory.glob(f"*{_STAGE}"),
        directory / "checkpoint",
    ]:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _sync_main(directory: Path, interval: float, shared_fd: int, parent: int) -> None:
    """The sync process: whenever the worker wrote whole frames past what the last sync
    covered (the positions the worker keeps in the shared page), copy them from the
    current file's stage into the file and ``fdatasync`` it, at most every ``interval``
    seconds (``audit.journal_sync_ms``, a millisecond by default: group commit), until
    the gateway worker that started it is gone. It decodes no frame: the worker moves
    the written position only after a whole frame is in the stage. After each sync it
    publishes the position it covered."""
    # ``parent``: the worker's pid, from its command line; read here, os.getppid()
    # would already be init's if the worker died while this process started.
    # Below the gateway and the database in CPU priority: on a busy machine a sync may
    # wait a little longer, the traffic does not wait for it.
    with contextlib.suppress(OSError):
        os.nice(10)
    shared = mmap.mmap(shared_fd, _SHARED_SIZE)
    os.close(shared_fd)
    unpack = _SHARED.unpack_from
    fd, current, synced = -1, -1, 0
    stage: mmap.mmap | None = None
    while True:
        gone = os.getppid() != parent
        start, written, _ = unpack(shared, 0)
        if start != current:
            # A new file (a rotation, which copied in and synced the one it closed).
            try:
                new = _open_pair(directory, start)
            except (FileNotFoundError, ValueError):  # not there yet, or already gone
                if gone:
                    return
                time.sleep(interval)
                continue
            if fd >= 0:
                os.close(fd)
            if stage is not None:
                stage.close()
            (fd, stage), current, synced = new, start, start + _HEAD.size
        if written <= synced:
            if gone:
                return
            time.sleep(interval)
            continue
        began = time.monotonic()
        try:
            assert stage is not None
            if written - start > len(stage):  # the file grew: map the rest too
                stage.close()
                stage = _map_stage(directory, start)
            os.pwrite(fd, stage[synced - start : written - start], synced - start)
            os.fdatasync(fd)
        except (OSError, ValueError) as exc:
            log.error("audit journal: cannot copy the stage into the file and sync it: %s", exc)
            if gone:
                return  # the stage keeps it; replay reads whichever holds more
            time.sleep(0.1)
            continue
        synced = written
        if unpack(shared, 0)[0] == current:
            _POSITION.pack_into(shared, _SHARED_SYNCED, written)
        # Groups of `interval` at least, however fast the disk syncs.
        if (spent := time.monotonic() - began) < interval:
            time.sleep(interval - spent)


def _open_pair(directory: Path, start: int) -> tuple[int, mmap.mmap]:
    """The sync process's ends of a file and its stage: the file to write, the stage
    mapped to read."""
    stage = _map_stage(directory, start)
    try:
        return os.open(directory / f"{start:016x}{_SUFFIX}", os.O_WRONLY), stage
    except BaseException:
        stage.close()
        raise


def _map_stage(directory: Path, start: int) -> mmap.mmap:
    fd = os.open(directory / f"{start:016x}{_STAGE}", os.O_RDONLY)
    try:
        return mmap.mmap(fd, 0, prot=mmap.PROT_READ)
    finally:
        os.close(fd)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker ends it (SIGTERM) when done
    _sync_main(Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
