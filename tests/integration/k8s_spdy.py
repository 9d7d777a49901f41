"""The server side of a SPDY/3 session, as much as the API server double needs to
serve ``kubectl port-forward``: kubectl (1.31 and later) tunnels SPDY inside a
WebSocket (``SPDY/3.1+portforward.k8s.io``) and opens, per local connection, an
``error`` and a ``data`` stream whose headers name the pod's port.

Frames (SPDY/3): a control frame is ``1 | version(15) | type(16) | flags(8) |
length(24) | payload``; a data frame ``0 | stream id(31) | flags(8) | length(24) |
data``. Header blocks are one zlib stream per direction with SPDY/3's preset
dictionary, which this module reads out of the kubectl binary under test (a protocol
constant; zlib checks it by its Adler-32) rather than carrying a copy.
"""

from __future__ import annotations

import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = (
    1, 2, 3, 4, 6, 7, 8, 9,
)  # fmt: skip
FLAG_FIN = 0x01
DICTIONARY_SIZE = 1423


def spdy_dictionary(kubectl: str | None = None) -> bytes:
    data = Path(kubectl or shutil.which("kubectl") or "/usr/bin/kubectl").read_bytes()
    start = data.find(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert start >= 0, "the SPDY/3 header dictionary is not in the kubectl binary"
    return data[start : start + DICTIONARY_SIZE]


@dataclass(frozen=True)
class Event:
    kind: str  # syn | data | rst | ping | goaway | other
    stream: int = 0
    headers: dict[str, str] | None = None
    data: bytes = b""
    fin: bool = False


class SpdyServer:
    def __init__(self, dictionary: bytes) -> None:
        self._inflate = zlib.decompressobj(zdict=dictionary)
        self._deflate = zlib.compressobj(zdict=dictionary)
        self._buffer = b""

    def feed(self, data: bytes) -> list[Event]:
        self._buffer += data
        events: list[Event] = []
        while len(self._buffer) >= 8:
            (first,) = struct.unpack(">I", self._buffer[:4])
            flags = self._buffer[4]
            length = int.from_bytes(self._buffer[5:8], "big")
            if len(self._buffer) < 8 + length:
                break
            payload, self._buffer = self._buffer[8 : 8 + length], self._buffer[8 + length :]
            if not first & 0x80000000:
                events.append(
                    Event("data", first & 0x7FFFFFFF, data=payload, fin=bool(flags & FLAG_FIN))
                )
                continue
            kind = first & 0xFFFF
            if kind == SYN_STREAM:
                stream = struct.unpack(">I", payload[:4])[0] & 0x7FFFFFFF
                headers = self._headers(payload[10:])
                events.append(Event("syn", stream, headers, fin=bool(flags & FLAG_FIN)))
            elif kind == HEADERS:
                self._headers(payload[4:])  # keeps the zlib stream in step
            elif kind == RST_STREAM:
                events.append(Event("rst", struct.unpack(">I", payload[:4])[0] & 0x7FFFFFFF))
            elif kind == PING:
                events.append(Event("ping", data=payload))
            elif kind == GOAWAY:
                events.append(Event("goaway"))
        return events

    def _headers(self, block: bytes) -> dict[str, str]:
        raw = self._inflate.decompress(block)
        (count,) = struct.unpack(">I", raw[:4])
        at, out = 4, {}
        for _ in range(count):
            (n,) = struct.unpack(">I", raw[at : at + 4])
            name = raw[at + 4 : at + 4 + n].decode()
            at += 4 + n
            (n,) = struct.unpack(">I", raw[at : at + 4])
            out[name.lower()] = raw[at + 4 : at + 4 + n].decode()
            at += 4 + n
        return out

    @staticmethod
    def _control(kind: int, flags: int, payload: bytes) -> bytes:
        return (
            struct.pack(">HH", 0x8000 | 3, kind)
            + bytes([flags])
            + len(payload).to_bytes(3, "big")
            + payload
        )

    def syn_reply(self, stream: int) -> bytes:
        block = self._deflate.compress(struct.pack(">I", 0)) + self._deflate.flush(
            zlib.Z_SYNC_FLUSH
        )
        return self._control(SYN_REPLY, 0, struct.pack(">I", stream) + block)

    def ping(self, payload: bytes) -> bytes:
        return self._control(PING, 0, payload)

    @staticmethod
    def data(stream: int, data: bytes, fin: bool = False) -> bytes:
        flags = FLAG_FIN if fin else 0
        return struct.pack(">I", stream) + bytes([flags]) + len(data).to_bytes(3, "big") + data
