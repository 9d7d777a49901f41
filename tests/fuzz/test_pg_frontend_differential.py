"""Differential fuzzing: the frontend decoder against the BodyReader decoder it replaced.

`FrontendDecoder` reads the hot messages' bytes directly, for speed. A decoder that
reads a message differently from PostgreSQL is a policy bypass, so the earlier
decoder, one `BodyReader` per message and a plain bytearray buffer, is kept here as
the reference, and both must agree on everything: each message (type, fields,
``raw``), each error and its text, and how many bytes stay buffered, whatever the
bytes, the session's encoding and the way the stream is cut into reads.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wardgate.postgres.codec import build
from wardgate.postgres.codec import messages as m
from wardgate.postgres.codec.decode import BodyReader
from wardgate.postgres.codec.errors import ProtocolError
from wardgate.postgres.codec.frontend import (
    MAX_STARTUP_PACKET_BYTES,
    FrontendDecoder,
    _function_call,
    _int16_list,
    _parse_startup_packet,
)

# Like test_pg_frontend_fuzz.py: bounded, so the suite stays fast.
FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Small, so generated lengths reach the limit on both sides of it.
MAX_MESSAGE = 96
# Valid client encodings (policy/encodings.py) plus ones that are not (sjis, ascii):
# the decoder takes whatever codec it is given.
ENCODINGS = ["utf-8", "latin-1", "sjis", "euc_jp", "cp1253", "koi8-r", "ascii"]


# -- the reference: the decoder as it was before the direct parsers -----------------
# (the parsers that still use BodyReader, for startup packets and function calls, are
# the decoder's own)


def _ref_one_string(message: Callable[[str], m.FrontendMessage]) -> _RefParser:
    """Query and CopyFail."""

    def parse(r: BodyReader) -> m.FrontendMessage:
        text = r.cstr()
        r.finish()
        return message(text)

    return parse


def _ref_parse(r: BodyReader) -> m.FrontendMessage:
    name = r.cstr()
    sql = r.cstr()
    count = r.uint16()
    if r.remaining < 4 * count:
        raise ProtocolError("parse message is shorter than its parameter types")
    types = tuple(r.uint32() for _ in range(count))
    r.finish()
    return m.Parse(name, sql, types)


def _ref_bind(r: BodyReader) -> m.FrontendMessage:
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
    if len(formats) > 1 and len(formats) != count:
        raise ProtocolError(f"bind has {len(formats)} parameter formats for {count} parameters")
    return m.Bind(portal, statement, formats, tuple(params), results)


def _ref_targeted(message: Callable[[str, str], m.FrontendMessage]) -> _RefParser:
    def parse(r: BodyReader) -> m.FrontendMessage:
        target = r.byte()
        if target not in (0x53, 0x50):
            raise ProtocolError(f"invalid describe/close target {target:#04x}")
        name = r.cstr()
        r.finish()
        return message(chr(target), name)

    return parse


def _ref_execute(r: BodyReader) -> m.FrontendMessage:
    portal = r.cstr()
    max_rows = r.int32()
    r.finish()
    return m.Execute(portal, max_rows)


def _ref_empty(message: m.FrontendMessage) -> _RefParser:
    def parse(r: BodyReader) -> m.FrontendMessage:
        r.finish()
        return message

    return parse


_RefParser = Callable[[BodyReader], m.FrontendMessage]
_REF_PARSERS: dict[int, _RefParser] = {
    ord("Q"): _ref_one_string(m.Query),
    ord("P"): _ref_parse,
    ord("B"): _ref_bind,
    ord("D"): _ref_targeted(m.Describe),
    ord("E"): _ref_execute,
    ord("C"): _ref_targeted(m.Close),
    ord("S"): _ref_empty(m.Sync()),
    ord("H"): _ref_empty(m.Flush()),
    ord("X"): _ref_empty(m.Terminate()),
    ord("d"): lambda r: m.CopyData(r.rest()),
    ord("c"): _ref_empty(m.CopyDone()),
    ord("f"): _ref_one_string(m.CopyFail),
    ord("F"): _function_call,
    ord("p"): lambda r: m.PasswordData(r.rest()),
}


class ReferenceDecoder:
    """The earlier FrontendDecoder, less its buffer compaction (not observable). The
    startup packet's parser did not change and is shared."""

    def __init__(self, max_message_bytes: int) -> None:
        self.max = max_message_bytes
        self.buf = bytearray()
        self.startup = True
        self.encoding = "utf-8"

    @property
    def buffered(self) -> int:
        return len(self.buf)

    def feed(self, data: bytes) -> None:
        self.buf += data

    def next_message(self) -> tuple[m.FrontendMessage, bytes] | None:
        buf = self.buf
        if self.startup:
            if len(buf) < 4:
                return None
            (length,) = struct.unpack_from("!i", buf)
            if length < 8 or length > MAX_STARTUP_PACKET_BYTES:
                raise ProtocolError(f"invalid startup packet length {length}")
            if len(buf) < length:
                return None
            raw = bytes(buf[:length])
            message = _parse_startup_packet(struct.unpack_from("!i", raw, 4)[0], BodyReader(raw, 8))
            del buf[:length]
            if isinstance(message, m.StartupMessage):
                self.startup = False
            return message, raw
        if len(buf) < 5:
            return None
        parser = _REF_PARSERS.get(buf[0])
        if parser is None:
            raise ProtocolError(f"unknown frontend message type {buf[0]:#04x}")
        (length,) = struct.unpack_from("!i", buf, 1)
        if length < 4:
            raise ProtocolError(f"invalid message length {length}")
        if length > self.max:
            raise ProtocolError(f"message of {length} bytes exceeds limit of {self.max}")
        if len(buf) < length + 1:
            return None
        raw = bytes(buf[: length + 1])
        del buf[: length + 1]
        return parser(BodyReader(raw, 5, encoding=self.encoding)), raw

    def peek_raw(self) -> bytes | None:
        buf = self.buf
        if self.startup or len(buf) < 5:
            return None
        if buf[0] not in _REF_PARSERS:
            raise ProtocolError(f"unknown frontend message type {buf[0]:#04x}")
        (length,) = struct.unpack_from("!i", buf, 1)
        if length < 4 or length > self.max:
            raise ProtocolError(f"invalid message length {length}")
        return bytes(buf[: length + 1]) if len(buf) >= length + 1 else None

    def skip_message(self) -> bytes:
        raw = self.peek_raw()
        if raw is None:
            raise ProtocolError("no complete message to skip")
        del self.buf[: len(raw)]
        return raw


# -- inputs: well-formed messages of every type, some of them damaged ---------------


class Inputs:
    """Draws messages field by field; each field may lie or be damaged, `rate` times
    as often as the base odds (a stream stops at its first error, so it wants few)."""

    def __init__(self, draw: st.DrawFn, encoding: str, rate: int = 1) -> None:
        self.draw, self.encoding, self.rate = draw, encoding, rate

    def fault(self, percent: int) -> bool:
        # Hypothesis starts from, and shrinks towards, 0: 0 is the well-formed choice.
        return self.draw(st.integers(0, 99)) >= 100 - percent * self.rate

    def text(self) -> bytes:
        """A string field with its NUL: text in the encoding, or now and then bytes that
        may not decode (a lone UTF-8 continuation byte, half a Shift JIS character)."""
        draw = self.draw
        if not self.fault(8):
            raw = draw(st.text(max_size=8)).encode(self.encoding, "ignore")
        elif self.fault(50):
            raw = draw(st.binary(max_size=8))
        else:
            raw = draw(st.sampled_from([b"\x80", b"caf\xc3\xa9", b"\x82", b"\xa4\xa2", b"\xff"]))
        return raw.replace(b"\0", b"") + b"\0"

    def count(self, true: int) -> int:
        """A list's count word: the truth, or a lie, often a small one (a check that is
        off by one byte shows only near the truth)."""
        draw = self.draw
        if not self.fault(5):
            return true
        if self.fault(50):
            return draw(st.integers(0, 40)) if self.fault(50) else draw(st.integers(0, 0xFFFF))
        return max(0, true + draw(st.integers(-2, 2)))

    def int16_list(self, size: int | None = None) -> bytes:
        codes = self.draw(st.lists(st.sampled_from([0, 1, -1, 2, 0x7FFF]), max_size=3))
        if size is not None:
            codes = [self.draw(st.sampled_from([0, 1]))] * size
        return struct.pack(f"!H{len(codes)}h", self.count(len(codes)), *codes)

    def value(self) -> bytes:
        """A Bind parameter or a function argument: NULL, or a length word and bytes."""
        draw = self.draw
        data = draw(st.one_of(st.none(), st.binary(max_size=6)))
        if data is None:
            return struct.pack("!i", draw(st.integers(-(2**31), -2)) if self.fault(10) else -1)
        size = len(data) + (draw(st.integers(-3, 6)) if self.fault(5) else 0)
        return struct.pack("!i", size) + data

    def body(self, kind: int) -> bytes:
        """A body laid out as `kind` wants it."""
        draw, text = self.draw, self.text
        match chr(kind):
            case "Q" | "f":
                return text()
            case "P":
                types = draw(st.lists(st.integers(0, 2**32 - 1), max_size=3))
                count = self.count(len(types))
                return text() + text() + struct.pack(f"!H{len(types)}I", count, *types)
            case "B":
                params = [self.value() for _ in range(draw(st.integers(0, 3)))]
                # None, one for all, one each; or a number that breaks that rule.
                formats = draw(st.sampled_from([0, 1, len(params)]))
                if self.fault(10):
                    formats = draw(st.integers(0, 3))
                return (
                    text()
                    + text()
                    + self.int16_list(formats)
                    + struct.pack("!H", self.count(len(params)))
                    + b"".join(params)
                    + self.int16_list()
                )
            case "D" | "C":
                return (b"X" if self.fault(5) else draw(st.sampled_from([b"S", b"P"]))) + text()
            case "E":
                return text() + struct.pack("!i", draw(st.integers(-(2**31), 2**31 - 1)))
            case "F":
                args = [self.value() for _ in range(draw(st.integers(0, 3)))]
                return (
                    struct.pack("!I", draw(st.integers(0, 2**32 - 1)))
                    + self.int16_list()
                    + struct.pack("!H", self.count(len(args)))
                    + b"".join(args)
                    + struct.pack("!h", draw(st.integers(-2, 2)))
                )
            case "S" | "H" | "X" | "c":
                return b""
        return draw(st.binary(max_size=12))  # d, p: any bytes

    def damaged(self, data: bytes) -> bytes:
        """Cut short, extra bytes, one byte changed, or one NUL removed; or as it is."""
        draw = self.draw
        if not self.fault(10):
            return data
        how = draw(st.sampled_from(["cut", "extend", "flip", "unterminate"]))
        if how == "cut" and data:
            # Often by a byte or two: checks on the last fields are the easiest to get wrong.
            keep = len(data) - draw(st.integers(1, min(len(data), 3)))
            return data[: draw(st.integers(0, len(data) - 1)) if self.fault(50) else keep]
        if how == "flip" and data:
            at = draw(st.integers(0, len(data) - 1))
            return data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
        if how == "unterminate" and b"\0" in data:
            at = draw(st.sampled_from([i for i, byte in enumerate(data) if byte == 0]))
            return data[:at] + data[at + 1 :]
        return data + draw(st.binary(min_size=1, max_size=4))

    def message(self, kind: int) -> bytes:
        data = self.damaged(self.body(kind))
        length = len(data) + 4
        if self.fault(3):
            length = self.draw(st.integers(-2, MAX_MESSAGE + 2))
        if self.fault(2):
            kind = self.draw(st.integers(0, 255))
        return bytes([kind]) + struct.pack("!i", length) + data

    def startup(self) -> bytes:
        choices = [b"user\0u\0", b"database\0d\0", b"x\0\xff\0"]
        data = self.damaged(b"".join(self.draw(st.lists(st.sampled_from(choices)))) + b"\0")
        code = self.draw(st.sampled_from([m.PROTOCOL_3_0, m.PROTOCOL_3_2, m.SSL_REQUEST_CODE, 1]))
        return struct.pack("!ii", len(data) + 8, code) + data


# The hot messages more often than the rest.
KINDS = list(_REF_PARSERS) + [ord(kind) for kind in "BBBDDEEPPQQS"]


@st.composite
def stream(draw: st.DrawFn) -> tuple[str, bool, bytes, list[int]]:
    encoding = draw(st.sampled_from(ENCODINGS))
    inputs = Inputs(draw, encoding)
    in_startup = inputs.fault(20)
    data = inputs.startup() if in_startup else b""
    for _ in range(draw(st.integers(1, 10))):
        data += inputs.message(draw(st.sampled_from(KINDS)))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    return encoding, in_startup, data, cuts


# -- the comparison --------------------------------------------------------------------

Decoder = FrontendDecoder | ReferenceDecoder
Outcome = tuple[object, ...]
# What the proxy does between reads: decode the next message, look at the next one's
# bytes (while the encoding is uncertain), drop it undecoded; and the server may
# report another client_encoding between any two of them.
OPS = ["next"] * 6 + ["peek", "skip"]
turn = st.tuples(st.sampled_from(OPS), st.one_of(st.none(), st.sampled_from(ENCODINGS)))


def step(decoder: Decoder, op: str) -> Outcome:
    try:
        if op == "peek":
            return (op, decoder.peek_raw(), decoder.buffered)
        if op == "skip":
            return (op, decoder.skip_message(), decoder.buffered)
        return (op, decoder.next_message(), decoder.buffered)
    except ProtocolError as exc:
        return ("error", str(exc), decoder.buffered)


def same(a: Outcome, b: Outcome) -> bool:
    # repr as well: a bytearray equals bytes, but a message must hold bytes.
    return a == b and repr(a) == repr(b)


def compare(
    new: FrontendDecoder, ref: ReferenceDecoder, chunks: list[bytes], turns: list[Turn]
) -> None:
    """Feed both the same reads; after each, run the same turns until one needs data."""
    pending = iter(turns)
    for number, chunk in enumerate(chunks):
        ref.feed(chunk)
        if number % 2:
            # A reader may hand over a buffer it reuses: the decoder must copy it.
            reused = bytearray(chunk)
            new.feed(reused)
            reused[:] = b"\xff" * len(reused)
        else:
            new.feed(chunk)
        while True:
            op, encoding = next(pending, ("next", None))
            if encoding is not None:
                new.encoding = ref.encoding = encoding
            got, want = step(new, op), step(ref, op)
            assert same(got, want), (got, want)
            if want[0] == "error":
                return
            if want[1] is None:
                break


Turn = tuple[str, str | None]


@FUZZ
@given(case=stream(), turns=st.lists(turn, max_size=12))
def test_decoder_matches_the_body_reader_reference(
    case: tuple[str, bool, bytes, list[int]], turns: list[Turn]
) -> None:
    encoding, in_startup, data, cuts = case
    new, ref = FrontendDecoder(max_message_bytes=MAX_MESSAGE), ReferenceDecoder(MAX_MESSAGE)
    if not in_startup:
        new.end_startup()
        ref.startup = False
    new.encoding = ref.encoding = encoding
    bounds = [0, *cuts, len(data)]
    compare(new, ref, [data[start:stop] for start, stop in pairwise(bounds)], turns)


@FUZZ
@given(
    data=st.binary(max_size=200),
    encoding=st.sampled_from(ENCODINGS),
    size=st.integers(1, 16),
)
def test_random_bytes_agree(data: bytes, encoding: str, size: int) -> None:
    new, ref = FrontendDecoder(max_message_bytes=MAX_MESSAGE), ReferenceDecoder(MAX_MESSAGE)
    new.end_startup()
    ref.startup = False
    new.encoding = ref.encoding = encoding
    compare(new, ref, [data[i : i + size] for i in range(0, len(data), size)], [])


# Every kind by itself as well, each field damaged more often, so that no check is
# left to the luck of the draw; Bind, with the most of them, more often than the rest.
EACH_KIND = settings(FUZZ, max_examples=150)


@st.composite
def damaged_often(draw: st.DrawFn, kind: int, encoding: str) -> bytes:
    return Inputs(draw, encoding, rate=3).message(kind)


def one_message(kind: int, data: st.DataObject, encoding: str, cut: int) -> None:
    raw = data.draw(damaged_often(kind, encoding))
    new, ref = FrontendDecoder(max_message_bytes=MAX_MESSAGE), ReferenceDecoder(MAX_MESSAGE)
    new.end_startup()
    ref.startup = False
    new.encoding = ref.encoding = encoding
    compare(new, ref, [raw[:cut], raw[cut:]], [])


@pytest.mark.parametrize("kind", list(_REF_PARSERS), ids=chr)
@EACH_KIND
@given(data=st.data(), encoding=st.sampled_from(ENCODINGS), cut=st.integers(0, 200))
def test_each_kind_matches_the_reference(
    kind: int, data: st.DataObject, encoding: str, cut: int
) -> None:
    one_message(kind, data, encoding, cut)


@settings(FUZZ, max_examples=1000)
@given(data=st.data(), encoding=st.sampled_from(ENCODINGS), cut=st.integers(0, 200))
def test_bind_matches_the_reference(data: st.DataObject, encoding: str, cut: int) -> None:
    one_message(ord("B"), data, encoding, cut)


def long_lists(size: int) -> list[bytes]:
    """Parse and Bind with `size` types, formats, parameters and result formats: past
    the lists the decoder reads with precompiled structs. The values need their sign
    (types above 2**31, format codes below 0: the decoder does not judge them)."""
    types = [2**32 - 1 - i for i in range(size)]
    codes = struct.pack(f"!H{size}h", size, *[-1 - i for i in range(size)])
    values = struct.pack("!H", size) + struct.pack("!i1s", 1, b"v") * size
    nulls = struct.pack("!H", size) + struct.pack("!i", -1) * size
    return [
        typed(b"P", b"s\0SELECT\0" + struct.pack(f"!H{size}I", size, *types)),
        typed(b"B", b"\0s\0" + codes + values + codes),
        typed(b"B", b"\0s\0" + struct.pack("!Hh", 1, 1) + nulls + codes),
    ]


def typed(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


@pytest.mark.parametrize("size", [0, 1, 31, 32, 33, 400])
def test_long_lists_match_the_reference(size: int) -> None:
    for raw in long_lists(size):
        new, ref = FrontendDecoder(), ReferenceDecoder(16 * 1024 * 1024)
        new.end_startup()
        ref.startup = False
        # Whole, short by one list entry, and with one entry too many.
        for data in (raw, raw[:-2], raw + b"\0\0"):
            compare(new, ref, [typed(data[:1], data[5:])], [])


@pytest.mark.parametrize("read", [1000, 4096, 65536 + 7, 1 << 20])
def test_streams_past_the_compaction_threshold_match(read: int) -> None:
    # More than the 64 KiB of consumed data after which the buffer is compacted, in
    # reads that end inside messages and (the last size) in one read.
    one = [
        build.parse("", "SELECT $1"),
        build.bind("", "", ["x" * 300]),
        build.describe("P", ""),
        build.execute(""),
        build.sync(),
        build.query("SELECT 1"),
    ]
    data = b"".join(one) * 400
    new, ref = FrontendDecoder(), ReferenceDecoder(16 * 1024 * 1024)
    new.end_startup()
    ref.startup = False
    compare(new, ref, [data[i : i + read] for i in range(0, len(data), read)], [])
    assert new.buffered == ref.buffered == 0


SAMPLES = [
    build.query("SELECT 'é'"),
    build.parse("s1", "SELECT $1, $2", (23, 2**32 - 1)),
    build.bind("p", "s1", [b"12", None, b""], [0, 1, 1], [1, 0]),
    build.bind("", "", [b"x"], [1], [1]),
    build.describe("S", "s1"),
    build.close("P", "p"),
    build.execute("p", 7),
    build.copy_fail("no"),
    typed(b"F", struct.pack("!IHhHi2sh", 1234, 1, 1, 1, 2, b"hi", 0)),
    build.sync(),
]


@pytest.mark.parametrize("raw", SAMPLES, ids=lambda raw: chr(raw[0]))
def test_every_truncation_and_extension_matches_the_reference(raw: bytes) -> None:
    # Exhaustive where the fuzzing is by chance: every check on a field's end.
    body = raw[5:]
    variants = [body[:size] for size in range(len(body) + 1)]
    variants += [body + extra for extra in (b"\0", b"\x01", b"\0\0", b"\x01\x02\x03")]
    for variant in variants:
        new, ref = FrontendDecoder(), ReferenceDecoder(16 * 1024 * 1024)
        new.end_startup()
        ref.startup = False
        compare(new, ref, [typed(raw[:1], variant)], [])
