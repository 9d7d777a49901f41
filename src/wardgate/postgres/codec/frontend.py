"""Sans-IO decoder for the bytes a PostgreSQL client sends to the gateway.

Fed raw bytes, it hands back one typed message at a time together with that
message's exact wire bytes, so the proxy can check the message and forward
the original unchanged. It never touches a socket.

Two framings exist: the startup phase (``int32 length, int32 code``: startup,
SSL, GSSAPI-encryption and cancel requests) and the typed phase (``byte type,
int32 length``). The decoder moves to the typed phase by itself after a
StartupMessage; `end_startup` does the same explicitly and is idempotent.

Every relayed message passes through here, so the typed-phase parsers read the
message bytes directly (``bytes.find``, precompiled structs, locals) rather than
through a `BodyReader`, which costs a Python call per field. They keep
BodyReader's checks, their order and its error messages: a message PostgreSQL
would read differently must fail here, not be judged as something else.
``tests/fuzz/test_pg_frontend_differential.py`` holds them to a BodyReader
reference. The startup packet and the legacy function call are rare and stay on
BodyReader.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from wardgate.postgres.codec import messages as m
from wardgate.postgres.codec.decode import (
    SHORT_BODY,
    TRAILING_BYTES,
    UNTERMINATED,
    BodyReader,
    invalid_text,
)
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
_INT32 = _HEADER
_UINT16 = struct.Struct("!H")
# Format-code and parameter-type lists of up to this many entries (nearly all) are
# read with a struct compiled once; longer ones compile theirs when they come.
_PRECOMPILED_LIST = 32
_INT16_LISTS = tuple(struct.Struct(f"!{n}h") for n in range(_PRECOMPILED_LIST))
_UINT32_LISTS = tuple(struct.Struct(f"!{n}I") for n in range(_PRECOMPILED_LIST))

# A typed message's parser gets its whole wire bytes (the body starts at 5) and the
# session's encoding; it may raise UnicodeDecodeError, which next_message reports.
_Parser = Callable[[bytes, str], m.FrontendMessage]


class FrontendDecoder:
    def __init__(self, max_message_bytes: int = 16 * 1024 * 1024) -> None:
        if max_message_bytes < 4:
            raise ValueError("max_message_bytes must be at least 4")
        self._max = max_message_bytes
        # Unconsumed data is self._buf[self._pos:]. While nothing is pending the
        # buffer is the last chunk fed, unchanged, so messages are sliced straight out
        # of it; a message that spans chunks is gathered in a bytearray. Consumed
        # bytes are dropped in bulk, which keeps feeding and decoding linear.
        self._buf: bytes | bytearray = b""
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
        buf, pos = self._buf, self._pos
        if pos == len(buf):
            # bytes() of a bytes object is that object: no copy. Anything mutable is
            # copied, as the caller may reuse it.
            self._buf = bytes(data)
            self._pos = 0
            return
        if isinstance(buf, bytes):
            # Growing bytes would copy everything pending on every read, quadratic
            # for a large message arriving in many reads.
            buf = self._buf = bytearray(memoryview(buf)[pos:])
            self._pos = 0
        buf += data

    def end_startup(self) -> None:
        self._startup = False

    def next_message(self) -> tuple[m.FrontendMessage, bytes] | None:
        """Return ``(message, raw)`` for the next complete message, or None to wait
        for more data. Header limits are checked before the body arrives, so an
        oversized message fails at once instead of being buffered."""
        if self._startup:
            return self._next_startup()
        buf, pos = self._buf, self._pos
        size = len(buf)
        if size - pos < 5:
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
        stop = pos + length + 1
        if stop > size:
            return None
        if stop == size:
            self._buf = b""
            self._pos = 0
        elif stop < _COMPACT_AFTER:
            self._pos = stop
        else:
            self._consume(stop - pos)
        # A slice of bytes is bytes already (and the whole of it is the object itself);
        # bytes() of it would cost a second call.
        raw = buf[pos:stop] if type(buf) is bytes else bytes(buf[pos:stop])
        if length <= _KNOWN_LONGEST:
            known = _KNOWN.get(raw)
            if known is not None:
                return known
        encoding = self.encoding
        try:
            return parser(raw, encoding), raw
        except UnicodeDecodeError:
            # Only the parsers' str decodes raise it, where BodyReader.cstr would.
            raise invalid_text(encoding) from None

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
        # The buffer is replaced, never cut in place: next_message slices a message
        # out of it after consuming it.
        pos = self._pos + n
        buf = self._buf
        if pos == len(buf):
            self._buf = b""
            pos = 0
        elif pos >= _COMPACT_AFTER and pos * 2 >= len(buf):
            self._buf = buf[pos:]
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


# The parsers below read fields in BodyReader's order and fail at the field where it
# would: a string is found, then decoded; a fixed-size field is bounds-checked before
# it is read; the body must be used up exactly (PostgreSQL's pq_getmsgend).


def _last_string(raw: bytes, start: int, encoding: str) -> str:
    """A string at `start` that must end the message."""
    nul = raw.find(0, start)
    if nul < 0:
        raise ProtocolError(UNTERMINATED)
    text = raw[start:nul].decode(encoding)
    if nul + 1 != len(raw):
        raise ProtocolError(TRAILING_BYTES)
    return text


def _query(raw: bytes, encoding: str) -> m.FrontendMessage:
    return m.Query(_last_string(raw, 5, encoding))


def _two_strings_and_count(raw: bytes, encoding: str) -> tuple[str, str, int, int]:
    """The start of Parse and Bind: two strings, then a uint16 count. Returns both
    strings, the count and where the bytes after it start."""
    nul = raw.find(0, 5)
    if nul < 0:
        raise ProtocolError(UNTERMINATED)
    first = raw[5:nul].decode(encoding)
    pos = nul + 1
    nul = raw.find(0, pos)
    if nul < 0:
        raise ProtocolError(UNTERMINATED)
    second = raw[pos:nul].decode(encoding)
    if nul + 3 > len(raw):
        raise ProtocolError(SHORT_BODY)
    return first, second, _UINT16.unpack_from(raw, nul + 1)[0], nul + 3


def _parse(raw: bytes, encoding: str) -> m.FrontendMessage:
    name, sql, count, pos = _two_strings_and_count(raw, encoding)
    end = len(raw)
    if end - pos < 4 * count:
        raise ProtocolError("parse message is shorter than its parameter types")
    if end - pos != 4 * count:
        raise ProtocolError(TRAILING_BYTES)
    types = _UINT32_LISTS[count] if count < _PRECOMPILED_LIST else struct.Struct(f"!{count}I")
    return m.Parse(name, sql, types.unpack_from(raw, pos))


def _bind(raw: bytes, encoding: str) -> m.FrontendMessage:
    portal, statement, format_count, pos = _two_strings_and_count(raw, encoding)
    end = len(raw)
    if end - pos < 2 * format_count:
        raise ProtocolError("format code list is longer than the message")
    codes = (
        _INT16_LISTS[format_count]
        if format_count < _PRECOMPILED_LIST
        else struct.Struct(f"!{format_count}h")
    )
    formats = codes.unpack_from(raw, pos)
    pos += 2 * format_count + 2
    if pos > end:
        raise ProtocolError(SHORT_BODY)
    (count,) = _UINT16.unpack_from(raw, pos - 2)
    if end - pos < 4 * count:
        raise ProtocolError("bind message is shorter than its parameters")
    params: list[bytes | None] = []
    for _ in range(count):
        if pos + 4 > end:
            raise ProtocolError(SHORT_BODY)
        (size,) = _INT32.unpack_from(raw, pos)
        pos += 4
        if size == -1:
            params.append(None)
        elif size < 0:
            raise ProtocolError(f"invalid parameter length {size}")
        else:
            stop = pos + size
            if stop > end:
                raise ProtocolError(SHORT_BODY)
            params.append(raw[pos:stop])
            pos = stop
    pos += 2
    if pos > end:
        raise ProtocolError(SHORT_BODY)
    (result_count,) = _UINT16.unpack_from(raw, pos - 2)
    if end - pos < 2 * result_count:
        raise ProtocolError("format code list is longer than the message")
    if end - pos != 2 * result_count:
        raise ProtocolError(TRAILING_BYTES)
    codes = (
        _INT16_LISTS[result_count]
        if result_count < _PRECOMPILED_LIST
        else struct.Struct(f"!{result_count}h")
    )
    # PostgreSQL's own rule: no format codes, one for all, or one per parameter.
    if format_count > 1 and format_count != count:
        raise ProtocolError(f"bind has {format_count} parameter formats for {count} parameters")
    return m.Bind(portal, statement, formats, tuple(params), codes.unpack_from(raw, pos))


def _targeted(message: Callable[[str, str], m.FrontendMessage]) -> _Parser:
    """Describe and Close: a target byte ("S" statement, "P" portal), then a name."""

    def parse(raw: bytes, encoding: str) -> m.FrontendMessage:
        if len(raw) < 6:
            raise ProtocolError(SHORT_BODY)
        target = raw[5]
        if target != 0x53 and target != 0x50:  # "S", "P"
            raise ProtocolError(f"invalid describe/close target {target:#04x}")
        return message("S" if target == 0x53 else "P", _last_string(raw, 6, encoding))

    return parse


def _execute(raw: bytes, encoding: str) -> m.FrontendMessage:
    nul = raw.find(0, 5)
    if nul < 0:
        raise ProtocolError(UNTERMINATED)
    portal = raw[5:nul].decode(encoding)
    end = nul + 5
    if end > len(raw):
        raise ProtocolError(SHORT_BODY)
    if end != len(raw):
        raise ProtocolError(TRAILING_BYTES)
    return m.Execute(portal, _INT32.unpack_from(raw, nul + 1)[0])


def _int16_list(r: BodyReader) -> tuple[int, ...]:
    count = r.uint16()
    if r.remaining < 2 * count:
        raise ProtocolError("format code list is longer than the message")
    return tuple(r.int16() for _ in range(count))


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


def _bodiless(message: m.FrontendMessage) -> _Parser:
    def parse(raw: bytes, encoding: str) -> m.FrontendMessage:
        if len(raw) != 5:
            raise ProtocolError(TRAILING_BYTES)
        return message

    return parse


_PARSERS: dict[int, _Parser] = {
    ord("Q"): _query,
    ord("P"): _parse,
    ord("B"): _bind,
    ord("D"): _targeted(m.Describe),
    ord("E"): _execute,
    ord("C"): _targeted(m.Close),
    ord("S"): _bodiless(m.Sync()),
    ord("H"): _bodiless(m.Flush()),
    ord("X"): _bodiless(m.Terminate()),
    ord("d"): lambda raw, encoding: m.CopyData(raw[5:]),
    ord("c"): _bodiless(m.CopyDone()),
    ord("f"): lambda raw, encoding: m.CopyFail(_last_string(raw, 5, encoding)),
    ord("F"): lambda raw, encoding: _function_call(BodyReader(raw, 5, encoding=encoding)),
    ord("p"): lambda raw, encoding: m.PasswordData(raw[5:]),
}

# Messages drivers send unchanged again and again (Sync; Describe, Execute and Close of
# the unnamed portal or statement), decoded once here by the parsers themselves, so
# next_message hands them out without building a frozen dataclass each time (the larger
# part of a small message's cost). Their strings are empty, the same in any encoding.
_KNOWN: dict[bytes, tuple[m.FrontendMessage, bytes]] = {
    raw: (_PARSERS[raw[0]](raw, "ascii"), raw)
    for raw in (
        b"S\0\0\0\x04",
        b"H\0\0\0\x04",
        b"X\0\0\0\x04",
        b"c\0\0\0\x04",
        b"D\0\0\0\x06P\0",
        b"D\0\0\0\x06S\0",
        b"C\0\0\0\x06P\0",
        b"C\0\0\0\x06S\0",
        b"E\0\0\0\x09\0\0\0\0\0",
    )
}
# A longer message skips the lookup (and the hashing of its bytes).
_KNOWN_LONGEST = max(len(raw) - 1 for raw in _KNOWN)  # as the length word counts
