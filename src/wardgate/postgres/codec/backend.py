"""Splitting the server's byte stream into messages, without copying the bulk.

The proxy must see every message boundary (to know when a statement completes,
how many rows it touched, when the server is ready again) but must not decode
or copy DataRow and CopyData payloads, which are the bulk of the traffic. So
those are handed back as *pass-through* slices of the fed chunk, possibly
partial; every other message is assembled whole (bounded) and handed back with
its raw bytes, so the proxy can forward it unchanged or replace it.
"""

from __future__ import annotations

from struct import Struct

from wardgate.postgres.codec.errors import ProtocolError

_HEADER = Struct("!BI")  # type as an int, length
_LENGTH = Struct("!I")

#: Message types streamed without assembling: DataRow and CopyData.
BULK_TYPES = frozenset(b"Dd")

#: Types a server may send after startup (and during it).
_KNOWN_TYPES = frozenset(b"RSKZCDEIHGWdcnt1234sTNAvV")


class BackendMessage:
    """One whole non-bulk server message: ``type`` is the byte value, ``raw`` the wire bytes."""

    __slots__ = ("type", "raw")

    def __init__(self, type_: int, raw: bytes) -> None:
        self.type = type_
        self.raw = raw

    @property
    def body(self) -> bytes:
        return self.raw[5:]

    def __repr__(self) -> str:
        return f"BackendMessage({chr(self.type)!r}, {len(self.raw)} bytes)"


Item = BackendMessage | memoryview


class BackendScanner:
    """Feed server bytes, get back a list of items in stream order.

    An item is either a :class:`BackendMessage` or a ``memoryview`` of bulk bytes
    to pass through as they are. ``bulk`` may be set to an empty set during
    startup, when every message matters.
    """

    def __init__(
        self, max_message_bytes: int = 64 * 1024 * 1024, bulk: frozenset[int] = BULK_TYPES
    ) -> None:
        self.max_message_bytes = max_message_bytes
        self.bulk = bulk
        # Whole: bulk messages come as runs of *whole* messages only; one that a chunk
        # cuts is assembled and handed back as a BackendMessage (masked sessions, which
        # must see every row whole, take the runs in bulk: postgres/results.py).
        self.whole = False
        self._partial = bytearray()  # an incomplete header or non-bulk message
        self._skip = 0  # bytes of a bulk message still to pass through

    @property
    def buffered(self) -> int:
        return len(self._partial)

    def feed(self, data: bytes) -> list[Item]:
        items: list[Item] = []
        view = memoryview(data)
        end = len(data)
        pos = 0
        if self._skip:
            n = min(self._skip, end)
            items.append(view[:n])
            self._skip -= n
            pos = n
        if self._partial:
            pos = self._complete_partial(data, pos, items)
        bulk_start = -1  # coalesce runs of whole bulk messages into one slice
        bulk = self.bulk
        unpack = _HEADER.unpack_from
        while pos < end:
            if end - pos < 5:
                if bulk_start >= 0:
                    items.append(view[bulk_start:pos])
                    bulk_start = -1
                self._partial += view[pos:end]
                pos = end
                break
            t, length = unpack(data, pos)
            if length < 4 or t not in _KNOWN_TYPES:
                raise ProtocolError(
                    f"server sent a malformed message (type {t!r}, length {length})"
                )
            stop = pos + 1 + length
            if t in bulk and (stop <= end or not self.whole):
                if bulk_start < 0:
                    bulk_start = pos
                if stop > end:
                    self._skip = stop - end
                    stop = end
                pos = stop
                continue
            if bulk_start >= 0:
                items.append(view[bulk_start:pos])
                bulk_start = -1
            if length > self.max_message_bytes:
                raise ProtocolError(f"server message of {length} bytes exceeds the limit")
            if stop > end:
                self._partial += view[pos:end]
                pos = end
                break
            items.append(BackendMessage(t, data[pos:stop]))
            pos = stop
        if bulk_start >= 0:
            items.append(view[bulk_start:pos])
        return items

    def _complete_partial(self, data: bytes, pos: int, items: list[Item]) -> int:
        """Finish the message started in an earlier chunk; returns the new position."""
        partial = self._partial
        end = len(data)
        if len(partial) < 5:
            need = 5 - len(partial)
            partial += data[pos : pos + need]
            pos += min(need, end - pos)
            if len(partial) < 5:
                return pos
        t, length = _HEADER.unpack_from(partial, 0)
        if length < 4 or t not in _KNOWN_TYPES:
            raise ProtocolError(f"server sent a malformed message (type {t!r}, length {length})")
        if t in self.bulk and not self.whole:
            # A bulk header split across chunks: pass the header on, stream the rest.
            items.append(memoryview(bytes(partial)))
            self._partial = bytearray()
            remaining = length - (len(partial) - 1)
            n = min(remaining, end - pos)
            if n:
                items.append(memoryview(data)[pos : pos + n])
            self._skip = remaining - n
            return int(pos + n)
        if length > self.max_message_bytes:
            raise ProtocolError(f"server message of {length} bytes exceeds the limit")
        need = 1 + length - len(partial)
        take = min(need, end - pos)
        partial += data[pos : pos + take]
        pos += take
        if take == need:
            items.append(BackendMessage(t, bytes(partial)))
            self._partial = bytearray()
        return pos
