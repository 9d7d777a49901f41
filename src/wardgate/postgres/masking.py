"""Masking PostgreSQL results: a plan per RowDescription, then DataRows rewritten.

The plan is decided once per result from the columns' types, formats and (for column
rules) their catalog names, so a result no rule can touch costs nothing per row. A
masked value always decodes in the client: text-like values are masked as text, a
whole-column rule on any other type turns the value into NULL, and IP addresses under
an IP rule become NULL in inet/cidr columns.
"""

from __future__ import annotations

import re
import struct
from enum import IntEnum
from functools import lru_cache
from typing import Any

from wardgate.masking.detect import CLEAN_SHAPES, SHAPE, SHAPE_MAX, clean_shape, may_contain
from wardgate.masking.masker import ascii_compatible
from wardgate.policy.mask_rules import SessionMasking
from wardgate.postgres.codec.decode import Column
from wardgate.postgres.codec.errors import ProtocolError
from wardgate.postgres.mask_layout import (
    HINTED,
    LAYOUTS_MAX,
    MASK,
    PREFILTER,
    SKIP,
    RowLayout,
    layout_of,
)
from wardgate.postgres.mask_outputs import MaskedOutputs

_INT16 = struct.Struct("!h")
_INT32 = struct.Struct("!i")

# text, varchar, bpchar, name, json, xml, unknown: their text and binary forms are the text.
TEXT_LIKE = frozenset({25, 1043, 1042, 19, 114, 142, 705})
JSONB = 3802  # binary form: version byte 1, then the text
TEXT_ARRAYS = frozenset({1009, 1015, 1014, 1003, 199, 143, 3807})
IP_TYPES = frozenset({869, 650})  # inet, cidr
FIRST_USER_OID = 16384  # domains, enums, citext...: text form is text
BYTEA = 17
# Text forms that stay valid with masked text inside: a tsvector's lexemes, a record's
# fields (composite values), bytea in escape form.
TEXT_HOLDERS = frozenset({3614, 2249, 2287})  # tsvector, record, record[]
# Types whose values cannot carry a sensitive value: no detection. Every other type is
# scanned (the second layer: whatever a query turns a value into, detection sees it).
NO_TEXT = frozenset({
    16, 26, 28, 700, 701, 1082, 1083, 1114, 1184, 1186, 1266, 2950, 18, 1560, 1562, 29,
    1000, 1021, 1022, 1182, 1115, 1185, 2951, 1187, 1028,  # their arrays
})  # fmt: skip
# Numbers can be a card or phone number (``select card::bigint``): their text form is
# scanned, and a number with a finding becomes NULL. Binary numbers are not parsed.
NUMBERS = frozenset({20, 21, 23, 1700, 790, 1005, 1007, 1016, 1231, 791})
# int2, int4: their text form (at most 10 digits, no leading zero) is a value
# detection passes whole (detect._CLEAN_VALUE), whatever it is: not scanned.
SMALL_INTEGERS = frozenset({21, 23})
# A result column named like this holds phone numbers (or SSNs, BSNs): bare digits count,
# as after a hint word ("4155552671" in a column `phone`, also `select x as phone`).
_HINTED_NAME = re.compile(r"(?i)phone|mobile|(?<![a-z])(?:tel|fax|cell|ssn|bsn)(?![a-z])")


@lru_cache(maxsize=4096)
def hinted_name(name: str) -> bool:
    return _HINTED_NAME.search(name) is not None


_HEX_MARK = b"\\x"
_HEX_RUN = re.compile(rb"\\{1,2}x((?:[0-9a-f]{2}){4,})")


class Do(IntEnum):
    PASS = 0
    CONTENT = 1  # content detectors on the text
    CONTENT_JSONB = 2  # binary jsonb: after the version byte
    CONTENT_ARRAY = 3  # binary array of text-like elements
    WHOLE = 4  # a column rule: the whole value, as text
    NULL = 5  # cannot be masked in place and stay valid: NULL
    CONTENT_HEX = 6  # text form with bytea hex runs (\x6a61...): decoded, scanned
    CONTENT_OR_NULL = 7  # text form of a non-text type: NULL when detection finds anything
    CONTENT_HINTED = 8  # text-like, in a column whose name says phone/SSN/BSN


# Plan actions that leave a value as it is when content detection finds nothing in it.
# (WHOLE masks whatever the value holds, NULL hides it, CONTENT_JSONB and CONTENT_ARRAY
# hide a value they cannot parse.)
_DETECTION_ONLY = frozenset(
    {Do.PASS, Do.CONTENT, Do.CONTENT_HINTED, Do.CONTENT_HEX, Do.CONTENT_OR_NULL}
)


_SKIP, _PREFILTER, _HINTED, _MASK = SKIP, PREFILTER, HINTED, MASK

_ROW_MEMO_MAX_ROW = 2048
_ROW_MEMO_MAX_ENTRIES = 16384
# Rows in a row the layout shortcut may fail on before it steps aside (Plan.misses).
_MISSES = 32
# Whole runs of rows, remembered too: an agent re-reading a result gets the same run
# (one lookup instead of one per row).
_RUN_MEMO_MAX_RUN = 16384
_RUN_MEMO_MAX_ENTRIES = 64


class Plan:
    """Per column: (what to do, the masker of a column rule). Masking a row is a pure
    function of the plan and the row's bytes, and agents read the same rows again and
    again, so each plan remembers the rows it masked (short rows, bounded)."""

    __slots__ = (
        "actions", "memo", "runs", "encoding", "detection_only", "steps", "layouts", "misses",
    )  # fmt: skip

    def __init__(self, actions: tuple[tuple[Do, object], ...]) -> None:
        self.actions = actions
        self.memo: dict[bytes, bytes] = {}
        self.runs: dict[bytes, bytes] = {}  # mask_data_rows: whole runs
        self.encoding = ""  # the client encoding the memories hold for (in_encoding)
        # Every action only runs content detection: a run of rows in which the bytes
        # prefilter finds nothing passes whole (rows_clean).
        self.detection_only = bool(actions) and all(do in _DETECTION_ONLY for do, _ in actions)
        # Per column, for _mask_row's loop (plain ints: an enum member hashes slowly):
        # _SKIP, _PREFILTER (a detection-only action: clean_bytes first), _HINTED (the
        # same, in a phone/SSN column), _MASK (straight to _mask_value).
        self.steps = tuple(
            _SKIP
            if do is Do.PASS
            else _HINTED
            if do is Do.CONTENT_HINTED
            else _PREFILTER
            if do in _DETECTION_ONLY
            else _MASK
            for do, _ in actions
        )
        self.layouts: dict[int, RowLayout] = {}  # by row length (mask_layout.py)
        # Rows in a row the shortcut failed on (rows with something to mask, re-read
        # from memory): past _MISSES it is not tried until a fresh row passes clean.
        self.misses = 0

    def in_encoding(self, encoding: str) -> None:
        """What a row masks to depends on how its bytes decode: the memories of masked
        rows and runs hold for one client encoding, and start again when it changes."""
        if encoding != self.encoding:
            self.memo.clear()
            self.runs.clear()
            self.encoding = encoding


def _remember(names: dict[Any, Any], key: object, value: object, most: int) -> None:
    """``names[key] = value`` as the newest entry; the oldest go past ``most``."""
    names.pop(key, None)
    names[key] = value
    while len(names) > most:
        del names[next(iter(names))]


def with_formats(columns: list[Column], formats: tuple[int, ...]) -> list[Column]:
    """The columns as a Bind's result-format codes will send them."""
    if not formats:
        formats = (0,)
    if len(formats) == 1:
        formats = formats * len(columns)
    if len(formats) != len(columns):
        return columns  # the server refuses such a Bind; nothing will be sent
    return [
        Column(c.name, c.table_oid, c.attnum, c.type_oid, f)
        for c, f in zip(columns, formats, strict=True)
    ]


def make_plan(
    columns: list[Column],
    masking: SessionMasking,
    names: dict[tuple[int, int], str],
    masked: frozenset[int] = frozenset(),
) -> Plan | None:
    """What to do with each column; None when nothing can apply (rows pass untouched).

    ``names`` maps (table oid, attnum) to ``schema.table.column`` for column rules;
    ``masked``: the positions of columns the database computed masked (mask_outputs.py),
    which hold a mask and nothing else, so they pass.
    """
    actions = tuple(
        (Do.PASS, None) if i in masked else _column_plan(col, masking, names)
        for i, col in enumerate(columns)
    )
    return Plan(actions) if any(do is not Do.PASS for do, _ in actions) else None


def _column_plan(
    col: Column, masking: SessionMasking, names: dict[tuple[int, int], str]
) -> tuple[Do, object]:
    qualified = names.get((col.table_oid, col.attnum)) if col.table_oid else None
    whole = masking.column_masker(qualified) if qualified else None
    text = col.format == 0
    if whole is not None:
        if col.type_oid in TEXT_LIKE or (text and col.type_oid >= FIRST_USER_OID):
            return Do.WHOLE, whole
        return Do.NULL, None
    if not masking.content:
        return Do.PASS, None
    if col.type_oid in IP_TYPES:
        return (Do.NULL, None) if masking.masks_ips else (Do.PASS, None)
    if col.type_oid in TEXT_LIKE:
        return (Do.CONTENT_HINTED if hinted_name(col.name) else Do.CONTENT), None
    if col.type_oid == JSONB:
        return (Do.CONTENT, None) if text else (Do.CONTENT_JSONB, None)
    if col.type_oid in TEXT_ARRAYS:
        return (Do.CONTENT, None) if text else (Do.CONTENT_ARRAY, None)
    if (
        col.type_oid in NO_TEXT
        or col.type_oid in SMALL_INTEGERS
        or (not text and col.type_oid in NUMBERS)
    ):
        return Do.PASS, None
    if not text:
        # Binary forms of other types (bytea, tsvector, records, arrays of other
        # elements) are not parsed here: bytea is its bytes, the rest becomes NULL.
        return (Do.CONTENT, None) if col.type_oid == BYTEA else (Do.NULL, None)
    if col.type_oid >= FIRST_USER_OID or col.type_oid in TEXT_HOLDERS:
        return Do.CONTENT_HEX, None  # composites, domains, enums, tsvector, records
    if col.type_oid == BYTEA:
        return Do.CONTENT_HEX, None
    # Arrays of any other element type, ranges, geometric types, hstore...
    return Do.CONTENT_OR_NULL, None


def mask_data_row(raw: bytes, plan: Plan, masking: SessionMasking, encoding: str) -> bytes:
    """A DataRow message (type byte included) with its values masked per ``plan``.

    Values no rule touches are skipped by their length, never copied; the row is
    rebuilt only when a value changed.
    """
    plan.in_encoding(encoding)
    return _remembered_row(raw, plan, masking, encoding)


def _remembered_row(raw: bytes, plan: Plan, masking: SessionMasking, encoding: str) -> bytes:
    memo = plan.memo
    masked = memo.get(raw)
    if masked is not None:
        return masked
    masked = _mask_row(raw, plan, masking, encoding)
    _memo_put(memo, raw, masked, _ROW_MEMO_MAX_ROW, _ROW_MEMO_MAX_ENTRIES)
    return masked


def _memo_put(memo: dict[bytes, bytes], key: bytes, value: bytes, size: int, most: int) -> None:
    """``memo[key] = value`` for a key of at most ``size`` bytes; past ``most``
    entries the memory starts again (a cold workload churns it)."""
    if len(key) <= size:
        if len(memo) >= most:
            memo.clear()
        memo[key] = value


def _mask_row(raw: bytes, plan: Plan, masking: SessionMasking, encoding: str) -> bytes:
    unpack = _INT32.unpack_from
    actions, steps = plan.actions, plan.steps
    # The steps that ask clean_shape first; none without an ASCII-compatible encoding.
    fast = _HINTED if _bytes_prefilter_holds(encoding) else _SKIP
    known = CLEAN_SHAPES
    length = len(raw)
    try:
        (count,) = _INT16.unpack_from(raw, 5)
        pos = 7
        edits: list[tuple[int, int, bytes | None]] = []  # (start, end, new value or NULL)
        nplan = len(actions)
        shapes: bytes | None = None
        for i in range(count):
            (size,) = unpack(raw, pos)
            start = pos
            pos += 4
            if size < 0:
                continue
            end = pos + size
            step = steps[i] if i < nplan else _MASK
            if step:
                if end > length:
                    raise ProtocolError("server sent a truncated DataRow")
                if step <= fast and size <= SHAPE_MAX:
                    # What every detection-only action starts with, asked first, by
                    # the value's shape (detect.SHAPE): most values of a fresh row are
                    # ids, amounts and words with nothing to find. A bytea hex run
                    # (the shape keeps ``\x``), decoded before detection, is not what
                    # the bytes show: those go the whole way.
                    if shapes is None:
                        shapes = raw.translate(SHAPE)  # once per row, sliced per value
                    shape = shapes[pos:end]
                    if _HEX_MARK not in shape:
                        hinted = step == _HINTED
                        clean = known[hinted].get(shape)
                        if clean is None:
                            clean = clean_shape(shape, hinted)
                        if clean:
                            pos = end
                            continue
                value = raw[pos:end]
                do, masker = actions[i] if i < nplan else (Do.NULL, None)
                new = _mask_value(value, do, masker, masking, encoding)
                if new is not value:
                    edits.append((start, end, new))
            pos = end
    except struct.error:
        raise ProtocolError("server sent a malformed DataRow") from None
    if not edits:
        return raw
    body = _spliced(
        raw,
        5,
        [
            (s, e, b"\xff\xff\xff\xff" if v is None else _INT32.pack(len(v)) + v)
            for s, e, v in edits
        ],
    )
    return b"D" + _INT32.pack(len(body) + 4) + body


def _spliced(data: bytes, first: int, edits: list[tuple[int, int, bytes]]) -> bytes:
    """``data`` from ``first`` on, with each (start, end) span of ``edits`` (in order)
    replaced by its bytes."""
    parts: list[bytes] = []
    last = first
    for start, end, new in edits:
        if start > last:
            parts.append(data[last:start])
        parts.append(new)
        last = end
    parts.append(data[last:])
    return b"".join(parts)


def _mask_value(
    value: bytes, do: Do, masker: object, masking: SessionMasking, encoding: str
) -> bytes | None:
    """The masked value, ``value`` itself when unchanged, or None for NULL."""
    if do is Do.PASS:
        return value
    if do is Do.NULL:
        return None
    if do is Do.CONTENT:
        if _HEX_MARK in value:  # a bytea in its hex form, cast to text
            return _mask_with_hex(value, masking, encoding)
        out = masking.mask_bytes(value, encoding)
        return value if out is None else out
    if do is Do.WHOLE:
        text = value.decode(encoding, "surrogateescape")
        return masker.mask_whole(text).encode(encoding, "surrogateescape")  # type: ignore[attr-defined, no-any-return]
    if do is Do.CONTENT_HINTED:
        out = masking.mask_bytes(value, encoding, hinted=True)
        return value if out is None else out
    if do is Do.CONTENT_HEX:
        return _mask_with_hex(value, masking, encoding)
    if do is Do.CONTENT_OR_NULL:
        out = _mask_with_hex(value, masking, encoding)
        return value if out is value else None
    if do is Do.CONTENT_JSONB:
        if value[:1] != b"\x01":
            return None  # a jsonb version this gateway does not know: hide it
        out = masking.mask_bytes(value[1:], "utf-8")
        return value if out is None else b"\x01" + out
    return _mask_binary_array(value, masking, encoding)


def _mask_with_hex(value: bytes, masking: SessionMasking, encoding: str) -> bytes:
    """Content-masked text, with each bytea hex run (``\\x6a616e65...``, also inside
    arrays and records) decoded, masked as text and encoded again."""
    original = value
    out = masking.mask_bytes(value, encoding)
    if out is not None:
        value = out
    if _HEX_MARK not in value:
        return original if value == original else value

    def masked_run(m: re.Match[bytes]) -> bytes:
        raw = bytes.fromhex(m.group(1).decode("ascii"))
        new = masking.mask_bytes(raw, encoding)
        if new is None:
            return m.group(0)
        return m.group(0)[: m.start(1) - m.start(0)] + new.hex().encode("ascii")

    value = _HEX_RUN.sub(masked_run, value)
    return original if value == original else value


def _mask_binary_array(value: bytes, masking: SessionMasking, encoding: str) -> bytes | None:
    """A binary array of text-like elements, each element masked; NULL if malformed."""
    try:
        ndim, _flags, _elem = struct.unpack_from("!iiI", value, 0)
        pos = 12
        count = 1 if ndim else 0
        for _ in range(ndim):
            (dim,) = _INT32.unpack_from(value, pos)
            count *= dim
            pos += 8
        parts = [value[:pos]]
        changed = False
        for _ in range(count):
            (size,) = _INT32.unpack_from(value, pos)
            pos += 4
            if size < 0:
                parts.append(b"\xff\xff\xff\xff")
                continue
            element = value[pos : pos + size]
            pos += size
            out = masking.mask_bytes(element, encoding)
            if out is not None:
                changed = True
                element = out
            parts.append(_INT32.pack(len(element)) + element)
    except struct.error:
        return None
    return b"".join(parts) if changed else value


# ErrorResponse / NoticeResponse fields that carry no user data and stay as they are.
_CODE_FIELDS = frozenset(b"SVCFLRPpn")
# SQLSTATE classes whose DETAIL quotes row values the statement never selected: 23
# (integrity constraint violation: ``Failing row contains (...)`` of a not-null, check,
# partition or exclusion constraint, ``Key (...)=(...)`` of a unique, foreign or
# exclusion key) and 44 (WITH CHECK OPTION violation: the failing row).
_ROW_DETAIL_CLASSES = (b"23", b"44")


def mask_error_fields(raw: bytes, masking: SessionMasking, encoding: str) -> bytes:
    """An ErrorResponse or NoticeResponse with its text fields masked (a unique
    violation's DETAIL quotes the key: ``Key (email)=(jane@example.com)``).

    For a principal under a column rule, the DETAIL of a constraint violation is
    withheld whole: ``UPDATE t SET name = NULL WHERE id = 1`` fails with ``Failing row
    contains (1, null, <every column of the row, masked ones in clear>)``, and a masked
    value content detection does not recognise (a password, a bare number) would pass."""
    body = raw[5:]
    fields = body.rstrip(b"\0").split(b"\0") if body.strip(b"\0") else []
    withhold = bool(masking.column_rules) and any(
        f[:1] == b"C" and f[1:3] in _ROW_DETAIL_CLASSES for f in fields
    )
    out = []
    changed = False
    for field in fields:
        if not field:
            continue
        code, value = field[:1], field[1:]
        if withhold and code == b"D":
            rule = masking.column_rules[0].rule
            value = (
                "wardgate: detail withheld: a constraint violation's detail quotes row "
                f"values, which may hold columns masked by rule {rule!r} in clear; the "
                "message names the constraint (ask a principal without the rule for the row)"
            ).encode(encoding, "replace")
            changed = True
        elif code[0] not in _CODE_FIELDS:
            masked = masking.mask_bytes(value, encoding)
            if masked is not None:
                value, changed = masked, True
        out.append(code + value + b"\0")
    if not changed:
        return raw
    new_body = b"".join(out) + b"\0"
    return raw[:1] + _INT32.pack(len(new_body) + 4) + new_body


def mask_copy_data(raw: bytes, masking: SessionMasking, encoding: str) -> bytes:
    """A CopyData message of a text or CSV COPY TO STDOUT, content-masked."""
    masked = masking.mask_bytes(raw[5:], encoding)
    if masked is None:
        return raw
    return b"d" + _INT32.pack(len(masked) + 4) + masked


# The plan for a result whose columns were never described: every value becomes NULL.
UNKNOWN_COLUMNS = Plan(())
# A statement's or portal's name at one moment: (target "S"|"P", name, epoch, version).
Version = tuple[str, str, int, int]


class ResultMasking:
    """One session's masking state: which statement and portal return which columns.

    Simple queries describe their result in the RowDescription before the rows; the
    extended protocol describes a statement or portal in answer to Describe, and the
    rows of an Execute come later, in the formats its Bind asked for.
    """

    def __init__(self, masking: SessionMasking, most_names: int = 100_000) -> None:
        self.masking = masking
        self.plan: Plan | None = None  # of the simple-query result being streamed
        self.copy_out = False
        # Per statement and portal name, the most recent `most_names` kept (the oldest
        # forgotten first: its rows then fail closed, UNKNOWN_COLUMNS). Names the server
        # no longer has are not removed one by one, so a client using ever new portal
        # names would otherwise grow these without end (limits.session_names).
        self._most = most_names
        self._described: dict[Version, list[Column]] = {}
        # portal version -> (statement version, result formats)
        self._bound: dict[Version, tuple[Version, tuple[int, ...]]] = {}
        self._versions: dict[tuple[str, str], int] = {}
        self._epochs = {"S": 0, "P": 0}  # DEALLOCATE ALL, CLOSE ALL: every name anew
        self._counter = 0
        self._plans: dict[tuple[object, ...], Plan | None] = {}  # by result shape, reused

    def plan_of(
        self,
        columns: list[Column],
        names: dict[tuple[int, int], str],
        masked: frozenset[int] = frozenset(),
    ) -> Plan | None:
        """The plan for a result of these columns (``masked``: make_plan's); the same
        shape reuses one plan (and its memory of masked rows) from query to query."""
        shape = (
            tuple(
                (
                    c.type_oid,
                    c.format,
                    names.get((c.table_oid, c.attnum)) if c.table_oid else None,
                    hinted_name(c.name),
                )
                for c in columns
            ),
            masked,
        )
        if shape not in self._plans:
            if len(self._plans) >= 1024:
                self._plans.clear()
            self._plans[shape] = make_plan(columns, self.masking, names, masked)
        return self._plans[shape]

    # Names are versioned: each Parse of a statement, each Bind of a portal, each SQL
    # change of either (PREPARE, DEALLOCATE, DECLARE, CLOSE) makes a new version, and a
    # Describe's answer, a Bind and an Execute use the version current when the gateway
    # forwarded them. A pipeline forwards "Bind '' A, Describe P, Execute, Bind '' B,
    # Execute" before any answer: an unversioned name would plan A's rows by B's Bind,
    # and B's rows by A's Describe (arriving after B's Bind), so a clear text column of
    # one would be planned as the other's int4 or bool (never scanned).

    def version(self, target: str, name: str) -> Version:
        """The current version of statement ("S") or portal ("P") ``name``."""
        return (target, name, self._epochs[target], self._versions.get((target, name), 0))

    def _bump(self, target: str, name: str) -> None:
        self._counter += 1
        _remember(self._versions, (target, name), self._counter, 2 * self._most)

    def parsed(self, statement: str) -> None:
        self._bump("S", statement)

    def renamed(self, target: str, name: str | None) -> None:
        """SQL (PREPARE, DEALLOCATE, DECLARE, CLOSE) changed what statement or portal
        ``name`` holds (None: every one of ``target``): its Describe, and a portal's
        Bind, say nothing of what it runs now; its rows are planned as unknown until
        it is described again."""
        if name is None:
            self._epochs[target] += 1
        else:
            self._bump(target, name)

    def bound(self, portal: str, statement: str, formats: tuple[int, ...]) -> None:
        self._bump("P", portal)
        binding = (self.version("S", statement), formats)
        _remember(self._bound, self.version("P", portal), binding, self._most)

    def described(self, target: Version, columns: list[Column]) -> None:
        """``target``: the version the Describe was forwarded for (``version``)."""
        _remember(self._described, target, columns, 2 * self._most)

    def plan_for_portal(
        self,
        portal: Version,
        names: dict[tuple[int, int], str],
        outputs: MaskedOutputs | None = None,
    ) -> Plan | None:
        """``portal``: its version when the Execute was forwarded; ``outputs``: what the
        Execute runs masks in the database (Pending.outputs)."""
        columns = self._columns(portal)
        if columns is None:
            return UNKNOWN_COLUMNS  # fail closed: never described, so never guessed
        masked = outputs.of(len(columns)) if outputs is not None else frozenset()
        return self.plan_of(columns, names, masked)

    def _columns(self, portal: Version) -> list[Column] | None:
        columns = self._described.get(portal)
        if columns is not None:
            return columns
        binding = self._bound.get(portal)
        if binding is None:
            return None
        statement, formats = binding
        described = self._described.get(statement)
        return None if described is None else with_formats(described, formats)

    def table_oids(self, columns: list[Column]) -> set[int]:
        """Tables whose column names a column rule needs (none without column rules)."""
        if not self.masking.columns:
            return set()
        return {c.table_oid for c in columns if c.table_oid}

    def portal_columns(self, portal: Version) -> list[Column]:
        return self._columns(portal) or []


@lru_cache(maxsize=64)
def _bytes_prefilter_holds(encoding: str) -> bool:
    return ascii_compatible(encoding)


def rows_clean(data: bytes, plan: Plan, encoding: str) -> bool:
    """True when no DataRow of ``data`` (a run of whole DataRows) can change under
    ``plan``: every action only runs the content detectors, no row has more values than
    the plan (the rest would become NULL), and the detectors' own bytes prefilter
    (``detect.may_contain``: fewer than two ASCII digits, no ``@``, ``eyJ``, IPv6 colons
    or secret words) finds nothing in the *whole* run. Each value is a substring of the
    run, and the prefilter can only say no less often for a substring (its tests are
    counts and ``in``), so the run's "no" is every value's "no", which is how
    ``Masker.mask_bytes`` decides a value has nothing to mask. A bytea hex run
    (``\\x6a...``), decoded before detection, is not a substring: its presence makes
    the answer False. Framing bytes (lengths) only make the answer False more often."""
    if not plan.detection_only or not _bytes_prefilter_holds(encoding):
        return False
    if _HEX_MARK in data or may_contain(data):
        return False
    width = len(plan.actions)
    pos, end = 0, len(data)
    while pos < end:
        if _INT16.unpack_from(data, pos + 5)[0] > width:
            return False
        pos += 1 + _INT32.unpack_from(data, pos + 1)[0]
    return True


def mask_data_rows(data: bytes, plan: Plan, masking: SessionMasking, encoding: str) -> bytes:
    """A run of whole DataRows (``BackendScanner.whole``), each masked per ``plan``;
    ``data`` itself when ``rows_clean`` proves none can change. A row with a layout
    seen before whose scanned values all have shapes known clean passes at once
    (mask_layout.py); the others go row by row."""
    plan.in_encoding(encoding)
    known = plan.runs.get(data)
    if known is not None:
        return data if known == data else known
    out = _mask_run(data, plan, masking, encoding)
    _memo_put(plan.runs, data, out, _RUN_MEMO_MAX_RUN, _RUN_MEMO_MAX_ENTRIES)
    return out


def _mask_run(data: bytes, plan: Plan, masking: SessionMasking, encoding: str) -> bytes:
    if rows_clean(data, plan, encoding):
        return data
    # The shortcut asks what _mask_row's first test asks, so it needs what that test
    # needs: an ASCII-compatible encoding, and no bytea hex run anywhere in the run.
    fast = _bytes_prefilter_holds(encoding) and _HEX_MARK not in data
    layouts = plan.layouts
    shapes: bytes | None = None  # ``data`` translated, when a layout first needs it
    misses = plan.misses
    edits: list[tuple[int, int, bytes]] = []
    pos, end = 0, len(data)
    try:
        while pos < end:
            stop = pos + 1 + _INT32.unpack_from(data, pos + 1)[0]
            if data[pos] != 68 or stop > end:
                raise ProtocolError("server sent a malformed run of DataRows")
            layout = layouts.get(stop - pos) if fast and misses < _MISSES else None
            if layout is not None:
                if shapes is None:
                    shapes = data.translate(SHAPE)
                if layout.clean(data, shapes, pos):
                    misses = 0
                    pos = stop
                    continue
                misses += 1
            raw = data[pos:stop]
            masked = _remembered_row(raw, plan, masking, encoding)
            if masked is not raw:
                if masked != raw:  # masked now, or remembered (an unchanged row's copy)
                    edits.append((pos, stop, masked))
            elif fast:
                # A fresh row with nothing to mask: the shortcut may serve rows like it.
                misses = 0
                if layout is None or not layout.fits(raw):
                    found = layout_of(raw, plan.steps)
                    if found is not None:
                        if len(layouts) >= LAYOUTS_MAX:
                            layouts.clear()
                        layouts[stop - pos] = found
            pos = stop
    except struct.error:
        raise ProtocolError("server sent a malformed DataRow") from None
    finally:
        plan.misses = misses
    return _spliced(data, 0, edits) if edits else data
