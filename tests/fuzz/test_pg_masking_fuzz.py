"""Rewriting server messages for masking: garbage in gives ProtocolError (or a valid
message), never another exception; well-formed rows keep their shape."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from wardgate.config import parse_config
from wardgate.identity.principals import Principal, PrincipalKind
from wardgate.policy.mask_rules import MaskingPolicy, SessionMasking
from wardgate.postgres.codec.decode import Column, parse_row_description
from wardgate.postgres.codec.errors import ProtocolError
from wardgate.postgres.masking import Do, make_plan, mask_data_row, mask_error_fields

CONFIG = """
groups: {a: {}}
principals: {bot: {kind: agent, groups: [a]}}
connections: {db: {type: postgres, upstream: {database: d, user: u}, roles: {a: r}}}
roles: {r: {read: allow}}
masking: {rules: [{name: m, entities: [all], columns: ["*.password"], strategy: partial}]}
"""


def _masking() -> SessionMasking:
    from pathlib import Path

    config = parse_config(CONFIG, Path("m.yaml"))
    bot = Principal("bot", PrincipalKind.AGENT, frozenset({"a"}))
    masking = MaskingPolicy(config, b"k" * 32).for_session(bot, "db")
    assert masking is not None
    return masking


MASKING = _masking()
COLUMNS = [
    Column("email", 1, 1, 25, 0),
    Column("id", 1, 2, 23, 1),
    Column("password", 1, 3, 25, 0),
    Column("tags", 1, 4, 1009, 1),
]
PLAN = make_plan(COLUMNS, MASKING, {(1, 3): "public.users.password"})


def _row(values: list[bytes | None]) -> bytes:
    body = struct.pack("!h", len(values)) + b"".join(
        b"\xff\xff\xff\xff" if v is None else struct.pack("!i", len(v)) + v for v in values
    )
    return b"D" + struct.pack("!i", len(body) + 4) + body


def _values(raw: bytes) -> list[bytes | None]:
    (count,) = struct.unpack_from("!h", raw, 5)
    pos, out = 7, []
    for _ in range(count):
        (size,) = struct.unpack_from("!i", raw, pos)
        pos += 4
        out.append(None if size < 0 else raw[pos : pos + size])
        pos += max(size, 0)
    assert pos == len(raw) and struct.unpack_from("!i", raw, 1)[0] == len(raw) - 1
    return out


def test_a_row_is_masked_and_keeps_its_shape() -> None:
    assert PLAN is not None
    assert [do for do, _ in PLAN.actions] == [Do.CONTENT, Do.PASS, Do.WHOLE, Do.CONTENT_ARRAY]
    raw = _row([b"mail jane.doe@example.com now", struct.pack("!i", 7), b"hunter2", None])
    values = _values(mask_data_row(raw, PLAN, MASKING, "utf-8"))
    assert values[0] is not None and b"jane.doe@example.com" not in values[0]
    assert values[1] == struct.pack("!i", 7) and values[3] is None
    assert values[2] is not None and values[2] != b"hunter2"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_rows_only_raise_protocol_error(data: bytes) -> None:
    assert PLAN is not None
    raw = b"D" + struct.pack("!i", len(data) + 4) + data
    try:
        out = mask_data_row(raw, PLAN, MASKING, "utf-8")
    except ProtocolError:
        return
    assert out[:1] == b"D"


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(st.none(), st.binary(max_size=40), st.text(max_size=40).map(str.encode)),
        max_size=6,
    )
)
def test_well_formed_rows_stay_well_formed(values: list[bytes | None]) -> None:
    assert PLAN is not None
    out = mask_data_row(_row(values), PLAN, MASKING, "utf-8")
    assert len(_values(out)) == len(values)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_descriptions_and_errors(data: bytes) -> None:
    try:
        parse_row_description(data)
    except ProtocolError:
        pass
    raw = b"E" + struct.pack("!i", len(data) + 4) + data
    out = mask_error_fields(raw, MASKING, "utf-8")
    assert out[:1] == b"E" and struct.unpack_from("!i", out, 1)[0] == len(out) - 1
