"""The backend scanner under arbitrary input and arbitrary chunking.

Invariants: only ProtocolError escapes; for a valid stream, the bytes handed back
(pass-through slices and whole messages) are exactly the bytes fed, in order, however
the stream is cut; every non-bulk message comes back whole and once."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from wardgate.postgres.codec.backend import BackendMessage, BackendScanner
from wardgate.postgres.codec.errors import ProtocolError

TYPES = b"RSKZCDEIHGWdcnt1234sTNAv"


def _message(t: int, body: bytes) -> bytes:
    return bytes([t]) + struct.pack("!I", len(body) + 4) + body


messages = st.lists(
    st.tuples(st.sampled_from(list(TYPES)), st.binary(max_size=300)), min_size=1, max_size=30
)


def _run(stream: bytes, cuts: list[int]) -> tuple[bytes, list[bytes]]:
    scanner = BackendScanner(max_message_bytes=1 << 20)
    out = bytearray()
    whole: list[bytes] = []
    points = sorted({c % (len(stream) + 1) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    for piece in pieces:
        for item in scanner.feed(piece):
            if isinstance(item, BackendMessage):
                out += item.raw
                whole.append(item.raw)
            else:
                out += item
    return bytes(out), whole


@settings(max_examples=300, deadline=None)
@given(messages, st.lists(st.integers(min_value=0, max_value=100_000), max_size=40))
def test_valid_stream_reassembles_under_any_chunking(
    msgs: list[tuple[int, bytes]], cuts: list[int]
) -> None:
    stream = b"".join(_message(t, body) for t, body in msgs)
    out, whole = _run(stream, cuts)
    assert out == stream
    expected = [_message(t, body) for t, body in msgs if t not in b"Dd"]
    assert whole == expected


@settings(max_examples=300, deadline=None)
@given(messages)
def test_byte_by_byte(msgs: list[tuple[int, bytes]]) -> None:
    stream = b"".join(_message(t, body) for t, body in msgs)
    out, whole = _run(stream, list(range(len(stream))))
    assert out == stream
    assert whole == [_message(t, body) for t, body in msgs if t not in b"Dd"]


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2000), st.lists(st.integers(min_value=0, max_value=5000), max_size=20))
def test_garbage_raises_only_protocol_error(data: bytes, cuts: list[int]) -> None:
    scanner = BackendScanner(max_message_bytes=4096)
    try:
        points = sorted({c % (len(data) + 1) for c in cuts})
        for a, b in zip([0, *points], [*points, len(data)], strict=True):
            scanner.feed(data[a:b])
            assert scanner.buffered <= 4096 + 5
    except ProtocolError:
        pass


def test_oversized_message_is_refused_before_buffering() -> None:
    scanner = BackendScanner(max_message_bytes=1024)
    try:
        scanner.feed(b"E" + struct.pack("!I", 10_000_000))
    except ProtocolError as exc:
        assert "exceeds" in str(exc)
    else:
        raise AssertionError("an oversized message header was accepted")


@settings(max_examples=300, deadline=None)
@given(messages, st.lists(st.integers(min_value=0, max_value=100_000), max_size=40))
def test_whole_mode_hands_back_runs_of_whole_rows(
    msgs: list[tuple[int, bytes]], cuts: list[int]
) -> None:
    """A masked session's scanner (bulk DataRows, whole mode): every slice is a run of
    whole DataRows, a row a chunk cuts comes back assembled, and the bytes are the
    stream's, in order, however it is cut."""
    stream = b"".join(_message(t, body) for t, body in msgs)
    scanner = BackendScanner(max_message_bytes=1 << 20, bulk=frozenset(b"D"))
    scanner.whole = True
    points = sorted({c % (len(stream) + 1) for c in cuts})
    out = bytearray()
    for a, b in zip([0, *points], [*points, len(stream)], strict=True):
        for item in scanner.feed(stream[a:b]):
            data = item.raw if isinstance(item, BackendMessage) else bytes(item)
            if not isinstance(item, BackendMessage):
                pos = 0
                while pos < len(data):  # whole DataRows only, end to end
                    assert data[pos] == ord("D")
                    pos += 1 + struct.unpack_from("!I", data, pos + 1)[0]
                assert pos == len(data)
            out += data
    assert bytes(out) == stream
