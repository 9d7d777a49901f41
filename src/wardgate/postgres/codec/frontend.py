"""Sans-IO decoder for the bytes a PostgreSQL client sends to the gateway.

Fed raw bytes, it hands back one typed message at a time together with that
message's exact wire bytes, so the proxy can check the message and forward
the original unchanged. It never touches a socket.

Two framings exist: the startup phase (``int32 length, int32 code``: startup,
SSL, GSSAPI-encryption and cancel requests) and the typed phase (``byte type,
int32 length``). The decoder moves to the typed phase by itself after a
StartupMessage; `end_startup` does the same explicitly and is idempotent.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from wardgate.postgres.codec import messages as m
from wardgate.postgres.codec.decode import BodyReader
from wardgate.postgres.codec.errors import ProtocolError

# PostgreSQL's MAX_STARTUP_PACKET_LENGTH: it refuses longer startup packets.
MAX_STARTUP_PACKET_BYTES = 10_000
# Protocol 3.2 widened the cancel key from 4 bytes to at most 256.
MAX_CANCEL_SECRET_BYTES = 256
# Compact the buffer only once this much consumed data sits in front of it,
# so small messages cost no memmove each.
_COMPACT_AFTER = 64 * 1024

_HEADER = struct.Struct("!i")
_STARTUP_HEADER = struct.Struct("!ii")

_Parser = Callable[[BodyReader], m.FrontendMessage]


class FrontendDecoder:
    def __init__(self, max_message_bytes: int = 16 * 1024 * 1024) -> None:
        if max_message_bytes < 4:
            raise ValueError("max_message_bytes must be at least 4")
        self._max = max_message_bytes
        # Unconsumed data is self._buf[self._pos:]; consumed bytes are dropped
        # in bulk by _consume, which keeps feeding and decoding linear.
        self._buf = bytearray()
        self._pos = 0
        self._startup = True
        # The Python codec of the session's client_encoding (see encodings.py); the
        # proxy updates it when the server reports a new one.
        self.encoding = "utf-8"

    @property
    def in_startup(self) -> bool:
        return self._startup

    @property
    def buffered(self) -> int:
        """Bytes fed but not yet returned as a message.

        After an SSLRequest or GSSENCRequest this must be 0 before the TLS
        handshake: bytes sent ahead of it were not encrypted and must not be
        trusted as coming from inside the TLS session (CVE-2021-23214).
        """
        return len(self._buf) - self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def end_startup(self) -> None:
        self._startup = False

    def next_message(self) -> tuple[m.FrontendMessage, bytes] | None:
        """Return ``(message, raw)`` for the next complete message, or None to wait
        for more data. Header limits are checked before the body arrives, so an
        oversized message fails at once instead of being buffered."""
        if self._startup:
            return self._next_startup()
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 5:
            return None
        kind = buf[pos]
        parser = _PARSERS.get(kind)
        if parser is None:
            raise ProtocolError(f"unknown frontend message type {kind:#04x}")
        (length,) = _HEADER.unpack_from(buf, pos + 1)
        if length < 4:
            raise ProtocolError(f"invalid message length {length}")
        if length > self._max:
            raise ProtocolError(f"message of {length} bytes exceeds limit of {self._max}")
        total = length + 1
        if len(buf) - pos < total:
            return None
        raw = bytes(buf[pos : pos + total])
        self._consume(total)
        return parser(BodyReader(raw, 5, encoding=self.encoding)), raw

    def peek_raw(self) -> bytes | None:
        """The next complete typed message's wire bytes, not consumed and not decoded
        (so a message whose strings need an encoding not yet known can wait), or None
        to wait for more data. Header checks are those of `next_message`."""
        buf, pos = self._buf, self._pos
        if self._startup or len(buf) - pos < 5:
            return None
        if buf[pos] not in _PARSERS:
            raise ProtocolError(f"unknown frontend message type {buf[pos]:#04x}")
        (length,) = _HEADER.unpack_from(buf, pos + 1)
        if length < 4 or length > self._max:
            raise ProtocolError(f"invalid message length {length}")
        if len(buf) - pos < length + 1:
            return None
        return bytes(buf[pos : pos + length + 1])

    def skip_message(self) -> bytes:
        """Consume the message `peek_raw` returned, without decoding it."""
        raw = self.peek_raw()
        if raw is None:
            raise ProtocolError("no complete message to skip")
        self._consume(len(raw))
        return raw

    def _next_startup(self) -> tuple[m.FrontendMessage, bytes] | None:
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 4:
            return None
        (length,) = _HEADER.unpack_from(buf, pos)
        if length < 8 or length > MAX_STARTUP_PACKET_BYTES:
            raise ProtocolError(f"invalid startup packet length {length}")
        if len(buf) - pos < length:
            return None
        raw = bytes(buf[pos : pos + length])
        _, code = _STARTUP_HEADER.unpack_from(raw)
        message = _parse_startup_packet(code, BodyReader(raw, 8))
        self._consume(length)
        if isinstance(message, m.StartupMessage):
            self._startup = False
        return message, raw

    def _consume(self, n: int) -> None:
        pos = self._pos + n
        buf = self._buf
        if pos == len(buf):
            buf.clear()
            pos = 0
        elif pos >= _COMPACT_AFTER and pos * 2 >= len(buf):
            del buf[:pos]
            pos = 0
        self._pos = pos


def _parse_startup_packet(code: int, r: BodyReader) -> m.FrontendMessage:
    if code == m.SSL_REQUEST_CODE:
        r.finish()
        return m.SSLRequest()
    if code == m.GSSENC_REQUEST_CODE:
        r.finish()
        return m.GSSENCRequest()
    if code == m.CANCEL_REQUEST_CODE:
        pid = r.int32()
        secret = r.rest()
        if not 4 <= len(secret) <= MAX_CANCEL_SECRET_BYTES:
            raise ProtocolError("cancel request key has an invalid length")
        return m.CancelRequest(pid, secret)
    if code >> 16 != 3:
        # Protocol 2 and unknown request codes; the minor version is left to
        # the caller, which may negotiate it down.
        raise ProtocolError(f"unsupported protocol or request code {code}")
    params: dict[str, str] = {}
    while True:
        if r.remaining == 0:
            raise ProtocolError("startup packet lacks its terminator")
        key = r.cstr()
        if not key:
            break
        if key in params:
            raise ProtocolError(f"duplicate startup parameter {key!r}")
        params[key] = r.cstr()
    r.finish()
    return m.StartupMessage(code, params)


def _query(r: BodyReader) -> m.FrontendMessage:
    sql = r.cstr()
    r.finish()
    return m.Query(sql)


def _parse(r: BodyReader) -> m.FrontendMessage:
    name = r.cstr()
    sql = r.cstr()
    count = r.uint16()
    if r.remaining < 4 * count:
        raise ProtocolError("parse message is shorter than its parameter types")
    types = tuple(r.uint32() for _ in range(count))
    r.finish()
    return m.Parse(name, sql, types)


def _int16_list(r: BodyReader) -> tuple[int, ...]:
    count = r.uint16()
    if r.remaining < 2 * count:
        raise ProtocolError("format code list is longer than the message")
    return tuple(r.int16() for _ in range(count))


def _bind(r: BodyReader) -> m.FrontendMessage:
    portal = r.cstr()
    statement = r.cstr()
    formats = _int16_list(r)
    count = r.uint16()
    if r.remaining < 4 * count:
        raise ProtocolError("bind message is shorter than its parameters")
    params: list[bytes | None] = []
    for _ in range(count):
        size = r.int32()
        if size == -1:
            params.append(None)
        elif size < 0:
            raise ProtocolError(f"invalid parameter length {size}")
        else:
            params.append(r.take(size))
    results = _int16_list(r)
    r.finish()
    # PostgreSQL's own rule: no format codes, one for all, or one per parameter.
    if len(formats) > 1 and len(formats) != count:
        raise ProtocolError(f"bind has {len(formats)} parameter formats for {count} parameters")
    return m.Bind(portal, statement, formats, tuple(params), results)


def _target(r: BodyReader) -> str:
    target = r.byte()
    if target not in (0x53, 0x50):  # "S", "P"
        raise ProtocolError(f"invalid describe/close target {target:#04x}")
    return chr(target)


def _describe(r: BodyReader) -> m.FrontendMessage:
    target = _target(r)
    name = r.cstr()
    r.finish()
    return m.Describe(target, name)


def _close(r: BodyReader) -> m.FrontendMessage:
    target = _target(r)
    name = r.cstr()
    r.finish()
    return m.Close(target, name)


def _execute(r: BodyReader) -> m.FrontendMessage:
    portal = r.cstr()
    max_rows = r.int32()
    r.finish()
    return m.Execute(portal, max_rows)


def _copy_fail(r: BodyReader) -> m.FrontendMessage:
    message = r.cstr()
    r.finish()
    return m.CopyFail(message)


def _function_call(r: BodyReader) -> m.FrontendMessage:
    # Only the oid is kept, but the whole body is walked so that garbage is
    # still reported as garbage rather than as a refused function call.
    oid = r.uint32()
    _int16_list(r)
    count = r.uint16()
    for _ in range(count):
        size = r.int32()
        if size < -1:
            raise ProtocolError(f"invalid argument length {size}")
        if size > 0:
            r.take(size)
    r.int16()  # result format
    r.finish()
    return m.FunctionCall(oid)


def _empty(message: m.FrontendMessage) -> _Parser:
    def parse(r: BodyReader) -> m.FrontendMessage:
        r.finish()
        return message

    return parse


_PARSERS: dict[int, _Parser] = {
    ord("Q"): _query,
    ord("P"): _parse,
    ord("B"): _bind,
    ord("D"): _describe,
    ord("E"): _execute,
    ord("C"): _close,
    ord("S"): _empty(m.Sync()),
    ord("H"): _empty(m.Flush()),
    ord("X"): _empty(m.Terminate()),
    ord("d"): lambda r: m.CopyData(r.rest()),
    ord("c"): _empty(m.CopyDone()),
    ord("f"): _copy_fail,
    ord("F"): _function_call,
    ord("p"): lambda r: m.PasswordData(r.rest()),
}
