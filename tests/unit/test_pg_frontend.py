"""Byte vectors for FrontendDecoder: every frontend message, whole and split."""

from __future__ import annotations

import struct

import pytest

from wardgate.postgres.codec import build
from wardgate.postgres.codec import messages as m
from wardgate.postgres.codec.errors import ProtocolError
from wardgate.postgres.codec.frontend import FrontendDecoder


def typed(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def encode(msg: m.FrontendMessage) -> bytes:
    """A test-side encoder for typed frontend messages, independent of the decoder."""
    match msg:
        case m.Query(sql):
            return typed(b"Q", cstr(sql))
        case m.Parse(name, sql, types):
            body = cstr(name) + cstr(sql) + struct.pack(f"!H{len(types)}I", len(types), *types)
            return typed(b"P", body)
        case m.Bind(portal, statement, formats, params, results):
            body = cstr(portal) + cstr(statement)
            body += struct.pack(f"!H{len(formats)}h", len(formats), *formats)
            body += struct.pack("!H", len(params))
            for p in params:
                body += struct.pack("!i", -1) if p is None else struct.pack("!i", len(p)) + p
            body += struct.pack(f"!H{len(results)}h", len(results), *results)
            return typed(b"B", body)
        case m.Describe(target, name):
            return typed(b"D", target.encode() + cstr(name))
        case m.Execute(portal, max_rows):
            return typed(b"E", cstr(portal) + struct.pack("!i", max_rows))
        case m.Close(target, name):
            return typed(b"C", target.encode() + cstr(name))
        case m.Sync():
            return typed(b"S", b"")
        case m.Flush():
            return typed(b"H", b"")
        case m.Terminate():
            return typed(b"X", b"")
        case m.CopyData(data):
            return typed(b"d", data)
        case m.CopyDone():
            return typed(b"c", b"")
        case m.CopyFail(message):
            return typed(b"f", cstr(message))
        case m.PasswordData(payload):
            return typed(b"p", payload)
    raise AssertionError(msg)


TYPED_MESSAGES: list[m.FrontendMessage] = [
    m.Query("SELECT 1"),
    m.Query(""),
    m.Query("SELECT 'ünïcødé ✓'"),
    m.Parse("", "SELECT $1", ()),
    m.Parse("s1", "SELECT $1, $2", (23, 4294967295)),
    m.Bind("", "", (), (), ()),
    m.Bind("p1", "s1", (1,), (b"\x00\x01", None, b""), (0, 1)),
    m.Bind("", "s1", (0, 1), (b"abc", None), ()),
    m.Describe("S", "s1"),
    m.Describe("P", ""),
    m.Execute("", 0),
    m.Execute("p1", 100),
    m.Close("S", "s1"),
    m.Close("P", "p1"),
    m.Sync(),
    m.Flush(),
    m.Terminate(),
    m.CopyData(b"1\tfoo\n"),
    m.CopyData(b""),
    m.CopyDone(),
    m.CopyFail("client aborted"),
    m.PasswordData(b"secret\0"),
    m.PasswordData(build.sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc")[5:]),
]

# Hand-written vectors pin the encoding itself, not just encoder/decoder agreement.
LITERAL_VECTORS: list[tuple[bytes, m.FrontendMessage]] = [
    (b"Q\x00\x00\x00\x0dSELECT 1\x00", m.Query("SELECT 1")),
    (b"S\x00\x00\x00\x04", m.Sync()),
    (b"X\x00\x00\x00\x04", m.Terminate()),
    (b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00", m.Execute("", 0)),
    (b"D\x00\x00\x00\x06S\x00", m.Describe("S", "")),
    (
        b"P\x00\x00\x00\x13s\x00SELECT\x00\x00\x01\x00\x00\x00\x17",
        m.Parse("s", "SELECT", (23,)),
    ),
    (
        b"B\x00\x00\x00\x15\x00\x00\x00\x00\x00\x02\xff\xff\xff\xff\x00\x00\x00\x01x\x00\x00",
        m.Bind("", "", (), (None, b"x"), ()),
    ),
    (
        b"F\x00\x00\x00\x16\x00\x00\x04\xd2\x00\x01\x00\x00\x00\x01\x00\x00\x00\x02hi\x00\x00",
        m.FunctionCall(1234),
    ),
]

STARTUP_VECTORS: list[tuple[bytes, m.FrontendMessage]] = [
    (b"\x00\x00\x00\x08\x04\xd2\x16\x2f", m.SSLRequest()),
    (b"\x00\x00\x00\x08\x04\xd2\x16\x30", m.GSSENCRequest()),
    (
        b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x30\x39\xde\xad\xbe\xef",
        m.CancelRequest(12345, b"\xde\xad\xbe\xef"),
    ),
    (
        b"\x00\x00\x00\x14\x00\x03\x00\x00user\x00alice\x00\x00",
        m.StartupMessage(196608, {"user": "alice"}),
    ),
]


def decode_all(
    data: bytes, *, startup: bool = False, chunk: int | None = None
) -> list[tuple[m.FrontendMessage, bytes]]:
    dec = FrontendDecoder()
    if not startup:
        dec.end_startup()
    out = []
    step = chunk or len(data) or 1
    for i in range(0, len(data), step):
        dec.feed(data[i : i + step])
        while (item := dec.next_message()) is not None:
            out.append(item)
    assert dec.buffered == 0
    return out


@pytest.mark.parametrize("msg", TYPED_MESSAGES, ids=repr)
def test_round_trip_typed(msg: m.FrontendMessage) -> None:
    raw = encode(msg)
    assert decode_all(raw) == [(msg, raw)]


@pytest.mark.parametrize(
    ("raw", "msg"), LITERAL_VECTORS + [(encode(x), x) for x in TYPED_MESSAGES[:6]], ids=repr
)
def test_literal_vectors_at_every_split(raw: bytes, msg: m.FrontendMessage) -> None:
    for cut in range(len(raw) + 1):
        dec = FrontendDecoder()
        dec.end_startup()
        dec.feed(raw[:cut])
        first = dec.next_message()
        if cut < len(raw):
            assert first is None
            dec.feed(raw[cut:])
            first = dec.next_message()
        assert first == (msg, raw)
        assert dec.next_message() is None
        assert dec.buffered == 0


@pytest.mark.parametrize(("raw", "msg"), STARTUP_VECTORS, ids=repr)
def test_startup_vectors_at_every_split(raw: bytes, msg: m.FrontendMessage) -> None:
    for cut in range(len(raw) + 1):
        dec = FrontendDecoder()
        dec.feed(raw[:cut])
        got = dec.next_message()
        if cut < len(raw):
            assert got is None
            dec.feed(raw[cut:])
            got = dec.next_message()
        assert got == (msg, raw)


def test_stream_byte_by_byte() -> None:
    params = {"user": "bob", "database": "db", "application_name": "é"}
    stream = build.startup_message(params) + b"".join(encode(x) for x in TYPED_MESSAGES)
    expected: list[m.FrontendMessage] = [m.StartupMessage(196608, params), *TYPED_MESSAGES]
    for chunk in (1, 2, 3, 7, 64, len(stream)):
        got = decode_all(stream, startup=True, chunk=chunk)
        assert [msg for msg, _ in got] == expected
        assert b"".join(raw for _, raw in got) == stream


def test_ssl_then_startup_stays_in_startup_until_startup_message() -> None:
    dec = FrontendDecoder()
    dec.feed(build.ssl_request())
    assert dec.next_message() == (m.SSLRequest(), build.ssl_request())
    assert dec.in_startup and dec.buffered == 0
    dec.feed(build.startup_message({"user": "u"}, protocol=m.PROTOCOL_3_2))
    msg, _ = dec.next_message() or (None, b"")
    assert msg == m.StartupMessage(m.PROTOCOL_3_2, {"user": "u"})
    assert not dec.in_startup
    dec.end_startup()  # idempotent
    assert not dec.in_startup


def test_bytes_pipelined_after_ssl_request_are_visible() -> None:
    # The proxy refuses to start TLS when plaintext follows the SSLRequest.
    dec = FrontendDecoder()
    dec.feed(build.ssl_request() + b"Q\x00")
    assert dec.next_message() is not None
    assert dec.buffered == 2


def test_builder_frontend_messages_decode() -> None:
    dec = FrontendDecoder()
    dec.feed(build.cancel_request(7, b"\x01" * 32))
    assert dec.next_message() == (
        m.CancelRequest(7, b"\x01" * 32),
        build.cancel_request(7, b"\x01" * 32),
    )
    dec = FrontendDecoder()
    dec.end_startup()
    pipeline = [
        build.query("SELECT 1"),
        build.parse("n", "SELECT $1", (25,)),
        build.password_message("pw"),
        build.sasl_response(b"c=biws"),
        build.sync(),
        build.terminate(),
    ]
    dec.feed(b"".join(pipeline))
    got = []
    while (item := dec.next_message()) is not None:
        got.append(item)
    assert [raw for _, raw in got] == pipeline
    assert [msg for msg, _ in got] == [
        m.Query("SELECT 1"),
        m.Parse("n", "SELECT $1", (25,)),
        m.PasswordData(b"pw\0"),
        m.PasswordData(b"c=biws"),
        m.Sync(),
        m.Terminate(),
    ]


BAD_TYPED: list[tuple[str, bytes]] = [
    ("unknown type", typed(b"Z", b"")),
    ("length below 4", b"Q\x00\x00\x00\x03"),
    ("negative length", b"Q\xff\xff\xff\xff"),
    ("missing NUL", typed(b"Q", b"SELECT 1")),
    ("trailing garbage", typed(b"Q", b"SELECT 1\0x")),
    ("invalid utf-8", typed(b"Q", b"\xff\xfe\0")),
    ("sync with body", typed(b"S", b"\0")),
    ("bad describe target", typed(b"D", b"X\0")),
    ("empty describe", typed(b"D", b"")),
    ("close missing name", typed(b"C", b"S")),
    ("execute short", typed(b"E", b"\0\0\0")),
    ("parse count too large", typed(b"P", b"\0\0\x00\x05\0\0\0\x17")),
    ("bind negative length", typed(b"B", b"\0\0\0\0\0\x01\xff\xff\xff\xfe\0\0")),
    ("bind overlong param", typed(b"B", b"\0\0\0\0\0\x01\0\0\0\x09ab\0\0")),
    ("bind missing result formats", typed(b"B", b"\0\0\0\0\0\0")),
    ("bind format count mismatch", typed(b"B", b"\0\0\0\x02\0\0\0\0\0\x01\0\0\0\0\0\0")),
    ("bind huge count", typed(b"B", b"\0\0\0\0\xff\xff")),
    ("function call truncated", typed(b"F", b"\0\0\x04")),
    ("copy fail without NUL", typed(b"f", b"oops")),
]


@pytest.mark.parametrize(("why", "raw"), BAD_TYPED, ids=[w for w, _ in BAD_TYPED])
def test_malformed_typed_messages(why: str, raw: bytes) -> None:
    dec = FrontendDecoder()
    dec.end_startup()
    dec.feed(raw)
    with pytest.raises(ProtocolError):
        dec.next_message()


def startup_packet(code: int, body: bytes) -> bytes:
    return struct.pack("!ii", len(body) + 8, code) + body


BAD_STARTUP: list[tuple[str, bytes]] = [
    ("length below 8", b"\x00\x00\x00\x07"),
    ("negative length", b"\xff\xff\xff\xff"),
    ("too long", struct.pack("!i", 10_001)),
    ("protocol 2", startup_packet(2 << 16, b"\0")),
    ("unknown code", startup_packet(12345, b"")),
    ("ssl with body", startup_packet(80877103, b"x")),
    ("gssenc with body", startup_packet(80877104, b"x")),
    ("cancel short secret", startup_packet(80877102, b"\0\0\0\x01ab")),
    ("cancel long secret", startup_packet(80877102, b"\0\0\0\x01" + b"k" * 257)),
    ("no terminator", startup_packet(196608, b"user\0alice\0")),
    ("empty body", startup_packet(196608, b"")),
    ("key without value", startup_packet(196608, b"user\0")),
    ("duplicate key", startup_packet(196608, b"user\0a\0user\0b\0\0")),
    ("trailing bytes", startup_packet(196608, b"user\0a\0\0x")),
    ("invalid utf-8", startup_packet(196608, b"user\0\xff\0\0")),
]


@pytest.mark.parametrize(("why", "raw"), BAD_STARTUP, ids=[w for w, _ in BAD_STARTUP])
def test_malformed_startup_packets(why: str, raw: bytes) -> None:
    dec = FrontendDecoder()
    dec.feed(raw)
    with pytest.raises(ProtocolError):
        dec.next_message()


def test_oversized_message_rejected_from_header_alone() -> None:
    dec = FrontendDecoder(max_message_bytes=1024)
    dec.end_startup()
    dec.feed(b"d" + struct.pack("!i", 1025))
    with pytest.raises(ProtocolError):
        dec.next_message()
    ok = FrontendDecoder(max_message_bytes=1024)
    ok.end_startup()
    ok.feed(typed(b"d", b"x" * 1020))
    assert ok.next_message() == (m.CopyData(b"x" * 1020), typed(b"d", b"x" * 1020))


def test_large_copy_stream_compacts_buffer() -> None:
    dec = FrontendDecoder()
    dec.end_startup()
    chunk = typed(b"d", b"r" * 1000)
    total = 0
    for _ in range(500):
        dec.feed(chunk + chunk[:10])
        while (item := dec.next_message()) is not None:
            total += 1
        dec.feed(chunk[10:])
        while (item := dec.next_message()) is not None:
            assert item[1] == chunk
            total += 1
        assert dec.buffered == 0
    assert total == 1000
    assert len(dec._buf) < 2 * 64 * 1024 + len(chunk)


def test_memoryview_and_bytearray_feeds() -> None:
    dec = FrontendDecoder()
    dec.end_startup()
    raw = typed(b"Q", b"SELECT 2\0")
    dec.feed(memoryview(raw)[:3])
    dec.feed(bytearray(raw[3:]))
    assert dec.next_message() == (m.Query("SELECT 2"), raw)
