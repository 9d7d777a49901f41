"""DDL through one worker, as every other worker of the gateway sees it.

Each worker keeps its own catalogue facts (gate.CatalogFacts) and reads its targets'
catalogues itself. A function that a session on worker A creates is as callable from a
session on worker B, and B's facts must not be trusted either from the moment A sends
what may commit it. The board is one page of memory shared by the workers (mapped
before they fork): per worker, two counters only that worker writes, the batches it
has in flight that may commit DDL, and how many such batches it has seen answered. A
worker reads the others' before it judges a statement (a struct call), and takes a
change as a DDL commit on any of its connections: they are judged as the worst case
until its own watch has read them again.
"""

from __future__ import annotations

import mmap
import struct

_SLOT = struct.Struct("=QQ")  # in flight, answered


class DdlBoard:
    def __init__(self, workers: int) -> None:
        self._map = mmap.mmap(-1, max(_SLOT.size * workers, mmap.PAGESIZE))
        self._all = struct.Struct(f"={2 * workers}Q")
        self.index = 0

    def publish(self, in_flight: int, answered: int) -> None:
        """This worker's counters (``index``: set in the worker after the fork)."""
        _SLOT.pack_into(self._map, _SLOT.size * self.index, in_flight, answered)

    def worker_gone(self, index: int) -> None:
        """Worker ``index`` died (the supervisor): what it had in flight may have
        committed, and no answer will come; the others take it as answered."""
        in_flight, answered = _SLOT.unpack_from(self._map, _SLOT.size * index)
        if in_flight:
            _SLOT.pack_into(self._map, _SLOT.size * index, 0, answered + in_flight)

    def others(self) -> tuple[int, int]:
        """The other workers' counters, summed: (in flight, answered)."""
        values = self._all.unpack_from(self._map)
        mine = 2 * self.index
        return (
            sum(values[0::2]) - values[mine],
            sum(values[1::2]) - values[mine + 1],
        )
