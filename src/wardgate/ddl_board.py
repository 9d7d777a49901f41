"""DDL through one worker, as every other worker of the gateway sees it.

Each worker keeps its own catalogue facts (gate.CatalogFacts) and reads its targets'
catalogues itself. A function that a session on worker A creates is as callable from a
session on worker B, and B's facts must not be trusted either from the moment A sends
what may commit it. The board is memory shared by the workers (mapped before they
fork). Per worker, two counters only that worker writes: the batches it has in flight
that may commit DDL, and how many such batches it has seen answered. A worker reads
the others' before it judges a statement (a struct call), and takes a change as a DDL
commit on any of its connections: they are judged as the worst case until its own
watch has read them again.

The board also carries the commit barrier's questions (postgres/commit_barrier.py):
before a worker sends what may commit DDL, every statement the other workers forwarded
to that database before must be answered. The asking worker writes a request (a
number that grows, and which database) and wakes the others through a pipe each; each
of them answers, when its statements have been, with that number in its row of acks.

A worker that dies is marked gone by the supervisor, and that is all: its backends may
still run what it sent them. The other workers end those (postgres/backends.py), and
the first to see them all ended settles the dead worker's row (`settle`): what it had
in flight counts as answered, its acks as given. Until then its DDL counts as in flight
and the commit barriers of the others wait for it.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct

_SLOT = struct.Struct("=QQ")  # in flight, answered
# Request number, database key (0: every database), and when the asking batch was
# judged (time.monotonic_ns: batches another worker holds, judged before, count).
_REQUEST = struct.Struct("=QQQ")
_ACK = struct.Struct("=Q")
_STATE = struct.Struct("=Q")  # per worker: RUNNING, GONE (not yet settled), SETTLED
RUNNING, GONE, SETTLED = 0, 1, 2
FAILED = 1 << 63  # in an ack: the worker could not get its statements answered
_EVERYONE = FAILED - 1  # the acks of a worker that is gone: it holds nothing


class DdlBoard:
    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._requests_at = _SLOT.size * workers
        self._acks_at = self._requests_at + _REQUEST.size * workers
        self._states_at = self._acks_at + _ACK.size * workers * workers
        size = self._states_at + _STATE.size * workers
        self._map = mmap.mmap(-1, max(size, mmap.PAGESIZE))
        self._all = struct.Struct(f"={2 * workers}Q")
        self.index = 0
        # One pipe per worker: a byte in it says "look at the requests".
        self._pipes = [os.pipe() for _ in range(workers)]
        for read, write in self._pipes:
            os.set_blocking(read, False)
            os.set_blocking(write, False)

    def publish(self, in_flight: int, answered: int) -> None:
        """This worker's counters (``index``: set in the worker after the fork)."""
        _SLOT.pack_into(self._map, _SLOT.size * self.index, in_flight, answered)

    def worker_gone(self, index: int) -> None:
        """Worker ``index`` died (the supervisor): the others are woken to end its
        backends (postgres/backends.py) and then `settle` its row."""
        _STATE.pack_into(self._map, self._states_at + _STATE.size * index, GONE)
        self._wake_others(index)

    def gone(self) -> list[int]:
        """The workers that died and whose rows are not settled yet."""
        return [
            worker
            for worker in range(self.workers)
            if _STATE.unpack_from(self._map, self._states_at + _STATE.size * worker)[0] == GONE
        ]

    def settle(self, index: int) -> None:
        """Dead worker ``index``'s backends have all ended: what it had in flight is
        answered (it may have committed), and no answer will come from it: its acks of
        the commit barrier's requests count as given. Safe to call more than once."""
        in_flight, answered = _SLOT.unpack_from(self._map, _SLOT.size * index)
        if in_flight:
            _SLOT.pack_into(self._map, _SLOT.size * index, 0, answered + in_flight)
        for asker in range(self.workers):
            _ACK.pack_into(self._map, self._ack_at(index, asker), _EVERYONE)
        _STATE.pack_into(self._map, self._states_at + _STATE.size * index, SETTLED)

    def others(self) -> tuple[int, int]:
        """The other workers' counters, summed: (in flight, answered)."""
        values = self._all.unpack_from(self._map)
        mine = 2 * self.index
        return (
            sum(values[0::2]) - values[mine],
            sum(values[1::2]) - values[mine + 1],
        )

    # -- the commit barrier (postgres/commit_barrier.py) --------------------------------

    @property
    def wake_fd(self) -> int:
        """This worker's end of its pipe: readable when another worker asks."""
        return self._pipes[self.index][0]

    def ask(self, database: int, since: int) -> int:
        """Ask every other worker to answer what it forwarded to ``database`` (a key,
        `database_key`) so far; the number to wait for (`answered`). A request not yet
        answered by all, for another database, widens to every database: a worker reads
        only the last request of each asker."""
        at = self._requests_at + _REQUEST.size * self.index
        number: int
        before: int
        earlier: int
        number, before, earlier = _REQUEST.unpack_from(self._map, at)
        if self.answered(number) is None:
            # Unanswered yet: the others read only this one, so it must ask for what
            # both ask: every database, if they differ; batches held since the later.
            database = database if before == database else 0
            since = max(since, earlier)
        _REQUEST.pack_into(self._map, at, number + 1, database, since)
        self._wake_others(self.index)
        return number + 1

    def _wake_others(self, index: int) -> None:
        for worker, (_, write) in enumerate(self._pipes):
            if worker != index:
                with contextlib.suppress(BlockingIOError):  # full: it will look anyway
                    os.write(write, b"\0")

    def answered(self, number: int) -> bool | None:
        """Whether every other worker answered request ``number`` of this one: True,
        False when one could not, None while one has not yet."""
        done = True
        for worker in range(self.workers):
            if worker == self.index:
                continue
            ack = _ACK.unpack_from(self._map, self._ack_at(worker, self.index))[0]
            if ack & ~FAILED < number:
                done = False
            elif ack & FAILED:
                return False
        return True if done else None

    def questions(self) -> list[tuple[int, int, int, int]]:
        """(asker, request number, database key, since) of the requests this worker has
        not answered; empties its pipe."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wake_fd, 4096):
                pass
        found = []
        for asker in range(self.workers):
            if asker == self.index:
                continue
            number, database, since = _REQUEST.unpack_from(
                self._map, self._requests_at + _REQUEST.size * asker
            )
            ack = _ACK.unpack_from(self._map, self._ack_at(self.index, asker))[0]
            if number > ack & ~FAILED:
                found.append((asker, number, database, since))
        return found

    def answer(self, asker: int, number: int, ok: bool) -> None:
        at = self._ack_at(self.index, asker)
        if _ACK.unpack_from(self._map, at)[0] & ~FAILED < number:
            _ACK.pack_into(self._map, at, number if ok else number | FAILED)

    def _ack_at(self, worker: int, asker: int) -> int:
        return self._acks_at + _ACK.size * (worker * self.workers + asker)
