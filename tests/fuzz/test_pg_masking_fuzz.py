"""Rewriting server messages for masking: garbage in gives ProtocolError (or a valid
message), never another exception; well-formed rows keep their shape."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from tests.unit.test_masking_properties import SENSITIVE, texts

from wardgate.config import parse_config
from wardgate.identity.principals import Principal, PrincipalKind
from wardgate.masking import ENTITIES
from wardgate.masking.detect import may_contain, scan
from wardgate.policy.mask_rules import MaskingPolicy, SessionMasking
from wardgate.postgres.codec.decode import Column, parse_row_description
from wardgate.postgres.codec.errors import ProtocolError
from wardgate.postgres.masking import (
    Do,
    make_plan,
    mask_data_row,
    mask_data_rows,
    mask_error_fields,
    rows_clean,
)

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


# A plan of content detection only (no column rule in the result): a run of rows the
# bytes prefilter proves clean passes whole (masking.rows_clean).
SCANNED = [
    Column("note", 0, 0, 25, 0),  # text: CONTENT
    Column("id", 0, 0, 23, 1),  # binary int4: PASS
    Column("phone", 0, 0, 25, 0),  # CONTENT_HINTED
    Column("blob", 0, 0, 17, 0),  # bytea, text form: CONTENT_HEX
    Column("n", 0, 0, 20, 0),  # int8, text form: CONTENT_OR_NULL
]
SCANNED_PLAN = make_plan(SCANNED, MASKING, {})
CLEAN_WORDS = st.sampled_from(
    ["hello", "Order", "naïve café", "shipped", "ok", "Grüße", "x", "", "n/a", "A-B"]
)
VALUES = st.one_of(
    st.none(),
    CLEAN_WORDS.map(str.encode),
    SENSITIVE.map(str.encode),
    texts().map(str.encode),
    st.binary(max_size=30),
    st.sampled_from([b"\\x6a616e65", b"1", b"7", b"\\xabcdef"]),
)


def _rows(draw_rows: list[list[bytes | None]]) -> list[bytes]:
    return [_row(values) for values in draw_rows]


def test_the_scanned_plan_is_detection_only() -> None:
    assert SCANNED_PLAN is not None and SCANNED_PLAN.detection_only
    assert [do for do, _ in SCANNED_PLAN.actions] == [
        Do.CONTENT, Do.PASS, Do.CONTENT_HINTED, Do.CONTENT_HEX, Do.CONTENT_OR_NULL
    ]  # fmt: skip
    assert PLAN is not None and not PLAN.detection_only  # a column rule: every row


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(VALUES, min_size=0, max_size=6), min_size=1, max_size=8))
def test_a_run_of_rows_is_masked_as_each_row_is(rows: list[list[bytes | None]]) -> None:
    """Whatever the run holds, its masking is its rows' masking, and a run the
    prefilter calls clean is one no row of which changes."""
    raws = _rows(rows)
    run = b"".join(raws)
    for plan in (SCANNED_PLAN, PLAN):
        assert plan is not None
        each = [mask_data_row(r, plan, MASKING, "utf-8") for r in raws]
        assert mask_data_rows(run, plan, MASKING, "utf-8") == b"".join(each)
        if rows_clean(run, plan, "utf-8"):
            assert each == raws


@settings(max_examples=300, deadline=None)
@given(SENSITIVE | texts(), st.lists(CLEAN_WORDS.map(str.encode), max_size=4))
def test_a_value_any_detector_masks_fails_the_prefilter(value: str, others: list[bytes]) -> None:
    """Soundness against every detector (emails, cards, IBANs, phones, SSNs, national
    ids, IPs, JWTs, secrets): a value that detection would change, in any column of
    the plan, makes the run's prefilter say no; and a plain text value of clean words
    passes whole."""
    assert SCANNED_PLAN is not None
    for column in (0, 2, 3, 4):
        values: list[bytes | None] = [b"ok", struct.pack("!i", 7), b"ok", b"ok", b"12"]
        values[column] = value.encode()
        row = _row(values)
        run = b"".join(_row([w, None, w, w, None]) for w in others) + row
        if mask_data_row(row, SCANNED_PLAN, MASKING, "utf-8") != row:
            assert not rows_clean(run, SCANNED_PLAN, "utf-8"), value
    if scan(value, ENTITIES):
        assert may_contain(value.encode())  # the prefilter the run's rests on
    clean = [_row([w, None, w, w, None]) for w in others]
    if clean and all(len(r) < 0x30 for r in clean):  # no length byte reads as a digit
        assert rows_clean(b"".join(clean), SCANNED_PLAN, "utf-8")


# The layout shortcut (mask_layout.py) learns from the rows it sees: the same run, and
# runs of rows that differ from it only in their digits (the same layouts and shapes),
# must be masked exactly as row by row, whatever it learnt before.
_SWAP = bytes.maketrans(b"0123456789", b"0987654321")


def _sibling(values: list[bytes | None]) -> list[bytes | None]:
    return [None if v is None else v.translate(_SWAP) for v in values]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.lists(VALUES, min_size=0, max_size=6), min_size=1, max_size=8),
    st.sampled_from(["utf-8", "latin-1", "shift_jis"]),
)
def test_rows_like_rows_seen_before_are_masked_as_each_row_is(
    rows: list[list[bytes | None]], encoding: str
) -> None:
    for plan in (SCANNED_PLAN, PLAN):
        assert plan is not None
        for variant in (rows, rows, [_sibling(r) for r in rows]):
            raws = _rows(variant)
            each = [mask_data_row(r, plan, MASKING, encoding) for r in raws]
            assert mask_data_rows(b"".join(raws), plan, MASKING, encoding) == b"".join(each)


def test_a_masked_column_position_passes_and_the_others_are_scanned() -> None:
    """A column the database masked (mask_outputs.py) passes as it is; the same value in
    a column it did not mask is masked."""
    plan = make_plan(SCANNED, MASKING, {}, frozenset({0}))
    assert plan is not None
    assert [do for do, _ in plan.actions][:3] == [Do.PASS, Do.PASS, Do.CONTENT_HINTED]
    email = b"user_0a1b2c3d4e@example.invalid"
    raw = _row([email, None, email, None, None])
    for out in (
        mask_data_row(raw, plan, MASKING, "utf-8"),
        mask_data_rows(raw, plan, MASKING, "utf-8"),
    ):
        values = _values(out)
        assert values[0] == email and values[2] != email


def test_remembered_rows_and_runs_hold_for_one_client_encoding() -> None:
    """The same bytes mean other text in another encoding: what a plan remembers of a
    row (or a run) masked under one is not served under the other."""
    plan = make_plan(SCANNED, MASKING, {})
    assert plan is not None
    row = _row([b"mail jane.doe@example.com", None, b"ok", None, None])
    for _ in range(2):
        assert mask_data_row(row, plan, MASKING, "utf-8") != row
        assert mask_data_rows(row, plan, MASKING, "utf-8") != row
        assert mask_data_row(row, plan, MASKING, "cp500") == row  # EBCDIC: no email
        assert mask_data_rows(row, plan, MASKING, "cp500") == row
