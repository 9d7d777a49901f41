"""DataRow bodies under arbitrary input: garbage gives ProtocolError or a row, never
another exception; a well-formed row comes back value for value, and any cut or
extension of it is refused."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from wardgate.postgres.codec.decode import parse_data_row
from wardgate.postgres.codec.errors import ProtocolError

values = st.lists(st.one_of(st.none(), st.binary(max_size=40)), max_size=8)


def _body(row: list[bytes | None]) -> bytes:
    return struct.pack("!h", len(row)) + b"".join(
        b"\xff\xff\xff\xff" if v is None else struct.pack("!i", len(v)) + v for v in row
    )


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_only_raises_protocol_error(data: bytes) -> None:
    try:
        row = parse_data_row(data)
    except ProtocolError:
        return
    # Whatever was accepted re-encodes to exactly the bytes given.
    assert _body(list(row)) == data


@settings(max_examples=300, deadline=None)
@given(values, st.binary(max_size=40))
def test_garbage_after_a_valid_count_and_lengths(row: list[bytes | None], tail: bytes) -> None:
    # Random bytes rarely form a plausible row; start from one and corrupt its end.
    body = _body(row)
    try:
        parse_data_row(body[: len(body) // 2] + tail)
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(values, st.data())
def test_well_formed_rows_round_trip_and_cuts_are_refused(
    row: list[bytes | None], data: st.DataObject
) -> None:
    body = _body(row)
    assert parse_data_row(body) == tuple(row)
    assert parse_data_row(memoryview(body)) == tuple(row)
    cut = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
    extra = data.draw(st.binary(min_size=1, max_size=8))
    for broken in (body[:cut], body + extra):
        try:
            parse_data_row(broken)
        except ProtocolError:
            continue
        raise AssertionError(f"accepted a malformed row: {broken!r}")
