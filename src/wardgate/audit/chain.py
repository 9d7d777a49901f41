"""The tamper-evident audit log: every event hashes the one before it.

    payload = canonical JSON text of the event's details (sorted keys, no whitespace)
    framed  = for each of id, repr(ts), type, session_id, principal, connection, payload:
              "<length in Unicode code points>:<value>\\n"
    hash    = sha256(prev_hash_hex + "\\n" + framed) over UTF-8, hex; the first prev_hash
              is 64 zeros

Editing a row breaks its hash; deleting one leaves a gap in the ids and a prev_hash that
no longer matches; moving rows around changes the ids their hashes were computed over.
The one-row ``audit_head`` table holds the newest (id, hash), so cutting off the tail is
visible too. Anyone able to rewrite the whole table *and* the head can forge a consistent
chain; exporting the head hash elsewhere is what closes that gap.

Appends from several processes are serialised by locking the head row inside the
appending transaction (SQLite: the store's ``BEGIN IMMEDIATE``; PostgreSQL:
``SELECT ... FOR UPDATE``), and the ids are assigned from the head, not by the database.
"""

from __future__ import annotations

import functools
import hashlib
import json
from _json import make_encoder
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from wardgate.store.db import Store
from wardgate.store.models import AuditEvent, AuditHead

GENESIS_HASH = "0" * 64
VERIFY_BATCH = 1000
_HEAD_ID = 1


# Built once: json.dumps with options builds a new encoder on every call.
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=str
)


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, non-ASCII kept as UTF-8. Anything JSON cannot express
    (bytes, sets, enums ...) becomes its ``str()`` rather than failing a whole batch."""
    return storable_json(_CANONICAL.encode(value))


def json_value(value: Any) -> str:
    """What ``canonical_json`` writes for ``value`` where it sits inside a larger value,
    before ``storable_json``: a payload can be written as pieces joined with its keys in
    sorted order. The encoder writes a nested value exactly as it writes that value alone;
    the common scalars skip its per-call setup, with the same functions it calls."""
    kind = type(value)
    if kind is str:
        return encode_basestring(value)
    if value is None:
        return "null"
    if kind is int:
        return int.__repr__(value)
    try:
        return "".join(_ENCODE(value, 0))
    except RecursionError:
        # A cycle: only the encoder's bookkeeping reports it as one (ValueError).
        return _CANONICAL.encode(value)


# What ``_CANONICAL.encode`` runs for anything but a string, made once instead of per
# call, and without the bookkeeping that finds cycles: a cycle recurses until
# RecursionError instead, which json_value hands back to the encoder.
_ENCODE = make_encoder(
    None,
    _CANONICAL.default,
    encode_basestring,
    None,
    _CANONICAL.key_separator,
    _CANONICAL.item_separator,
    _CANONICAL.sort_keys,
    _CANONICAL.skipkeys,
    _CANONICAL.allow_nan,
)


def storable_json(text: str) -> str:
    """JSON text made storable. Works character by character (only lone surrogates
    change), so text joined from pieces may be passed through once, whole."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # Lone surrogates (bytes a client sent that are not UTF-8) cannot be stored
            # in a text column; keep them visible as escapes instead.
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def storable_text(value: str) -> str:
    """``value`` made storable in any text column: PostgreSQL rejects NUL characters and
    neither store accepts lone surrogates (undecodable client bytes). A value that can
    never be stored would otherwise fail its batch on every retry and stall recording."""
    if "\x00" in value:
        value = value.replace("\x00", "\\x00")
    if value.isascii():
        return value  # no surrogates: spares encoding every identifier of every event
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def event_hash(
    prev_hash: str,
    id: int,
    ts: float,
    type: str,
    session_id: str,
    principal: str,
    connection: str,
    payload: str,
) -> str:
    """Name the fields (keywords): only the appender's loop passes them by position,
    where keywords cost a noticeable part of the call."""
    # Each field is prefixed with its length, so no field's content can be moved into
    # its neighbour; cheaper than a JSON envelope, which re-escaped the whole payload.
    i, t = str(id), repr(float(ts))
    framed = (
        f"{prev_hash}\n{len(i)}:{i}\n{len(t)}:{t}\n{len(type)}:{type}\n"
        f"{len(session_id)}:{session_id}\n{len(principal)}:{principal}\n"
        f"{len(connection)}:{connection}\n{len(payload)}:{payload}\n"
    )
    return hashlib.sha256(framed.encode("utf-8", "surrogatepass")).hexdigest()


_EVENT_COLUMNS = (
    "id", "ts", "type", "session_id", "principal", "connection", "payload", "prev_hash", "hash"
)  # fmt: skip


@functools.cache
def _chain_sql(dialect: str, paramstyle: str) -> tuple[str, str, str]:
    """(read and lock the head, insert events, move the head) as driver SQL: built once,
    where SQLAlchemy would build and look up a compiled statement on every append."""
    mark = "?" if paramstyle == "qmark" else "%s"  # sqlite3 / psycopg
    head = AuditHead.__tablename__
    # SQLite has no FOR UPDATE: the store's BEGIN IMMEDIATE holds the write lock already.
    lock = " FOR UPDATE" if dialect == "postgresql" else ""
    return (
        f"SELECT last_id, last_hash FROM {head} WHERE id = {_HEAD_ID}{lock}",
        f"INSERT INTO {AuditEvent.__tablename__} ({', '.join(_EVENT_COLUMNS)}) "
        f"VALUES ({', '.join([mark] * len(_EVENT_COLUMNS))})",
        f"UPDATE {head} SET last_id = {mark}, last_hash = {mark} WHERE id = {_HEAD_ID}",
    )


@dataclass(frozen=True, slots=True)
class NewEvent:
    ts: float
    type: str
    session_id: str
    principal: str
    connection: str
    payload: Mapping[str, Any]


# An event as it is stored, without id and hashes: (ts, type, session_id, principal,
# connection, payload), the text fields storable, the payload canonical JSON.
EncodedEvent = tuple[float, str, str, str, str, str]


def encoded(ev: NewEvent) -> EncodedEvent:
    return (
        ev.ts,
        ev.type,
        storable_text(ev.session_id),
        storable_text(ev.principal),
        storable_text(ev.connection),
        canonical_json(dict(ev.payload)),
    )


def append_events(session: Session, events: Sequence[NewEvent]) -> int:
    """Append ``events`` to the chain inside ``session``'s (write) transaction.

    Returns the id of the last event. The caller commits; until then the head row stays
    locked, so keep the transaction short.
    """
    if not events:
        return 0
    # What the caller added goes first, as when the head was read through the Session
    # (autoflush): the same statements in the same order, so the same locks.
    session.flush()
    return append_encoded(session.connection(), [encoded(ev) for ev in events])


def append_encoded(conn: Connection, events: Sequence[EncodedEvent]) -> int:
    """``append_events`` for events already encoded (the recorder's writer encodes its
    actions without building their payload dicts)."""
    if not events:
        return 0
    read_head, insert, move_head = _chain_sql(conn.dialect.name, conn.dialect.paramstyle)
    head = conn.exec_driver_sql(read_head).one_or_none()
    if head is None:
        raise RuntimeError("audit_head row is missing: the audit log has been tampered with")
    last_id, prev = int(head[0]), str(head[1])
    rows: list[tuple[Any, ...]] = []
    for ts, type_, session_id, principal, connection, payload in events:
        last_id += 1
        digest = event_hash(prev, last_id, ts, type_, session_id, principal, connection, payload)
        rows.append((last_id, ts, type_, session_id, principal, connection, payload, prev, digest))
        prev = digest
    # Straight to the driver's executemany: SQLAlchemy's per-row parameter handling
    # cost more than the insert itself on the writer thread, which shares the GIL
    # with the proxy.
    conn.exec_driver_sql(insert, rows)
    conn.exec_driver_sql(move_head, (last_id, prev))
    return last_id


def append(store: Store, events: Sequence[NewEvent]) -> int:
    with store.session() as session:
        return append_events(session, events)


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    checked: int
    first_broken_id: int | None
    reason: str
    # ok, but something the walk accepted rests on what anyone with the store can write
    warning: str | None = None


class _Walker:
    """Checks events one at a time, in id order, against the running hash."""

    def __init__(self, swept: Mapping[int, tuple[int, str]] | None = None) -> None:
        self.last_id = 0
        self.last_hash = GENESIS_HASH
        self.checked = 0
        # Runs of ids a retention sweep deleted (audit/retention.py): first id ->
        # (last id, hash of the last). Only these gaps are allowed, and only with the
        # next event's prev_hash equal to the run's hash.
        self.swept = swept or {}
        self.skipped = 0

    def check(self, row: Any) -> VerifyResult | None:
        expected = self.last_id + 1
        while expected < row.id and expected in self.swept:
            last, digest = self.swept[expected]
            if last >= row.id:
                break
            self.skipped += last - expected + 1
            self.last_id, self.last_hash = last, digest
            expected = last + 1
        if row.id != expected:
            return VerifyResult(
                False,
                self.checked,
                expected,
                f"event {expected} is missing (the next event is {row.id})",
            )
        if row.prev_hash != self.last_hash:
            return VerifyResult(
                False,
                self.checked,
                row.id,
                "prev_hash does not match the previous event (deleted or reordered events)",
            )
        digest = event_hash(
            row.prev_hash,
            id=row.id,
            ts=row.ts,
            type=row.type,
            session_id=row.session_id,
            principal=row.principal,
            connection=row.connection,
            payload=row.payload,
        )
        if digest != row.hash:
            return VerifyResult(
                False, self.checked, row.id, "content does not match its hash (event edited)"
            )
        self.last_id, self.last_hash = row.id, row.hash
        self.checked += 1
        return None


# An event's columns in the order the hash covers them (verify, the sink's copy).
EVENT_COLUMNS = (
    AuditEvent.id,
    AuditEvent.ts,
    AuditEvent.type,
    AuditEvent.session_id,
    AuditEvent.principal,
    AuditEvent.connection,
    AuditEvent.payload,
    AuditEvent.prev_hash,
    AuditEvent.hash,
)


def _walk(store: Store, walker: _Walker, up_to: int | None) -> VerifyResult | None:
    cols = EVENT_COLUMNS
    while True:
        # Keyset pagination: one short read transaction per page, so a long verify
        # neither holds memory nor blocks the recorder.
        stmt = select(*cols).where(AuditEvent.id > walker.last_id)
        if up_to is not None:
            stmt = stmt.where(AuditEvent.id <= up_to)
        stmt = stmt.order_by(AuditEvent.id).limit(VERIFY_BATCH)
        with store.session(write=False) as session:
            page = session.execute(stmt).all()
        if not page:
            return None
        for row in page:
            broken = walker.check(row)
            if broken is not None:
                return broken


SWEPT_TYPE = "retention.swept"  # audit/retention.py


def swept_runs(store: Store) -> dict[int, tuple[int, str]]:
    """What retention sweeps said they deleted. Trusted only as far as the walk that
    uses it succeeds: each retention.swept event is itself a checked link."""
    runs: dict[int, tuple[int, str]] = {}
    with store.session(write=False) as session:
        for (payload,) in session.execute(
            select(AuditEvent.payload).where(AuditEvent.type == SWEPT_TYPE)
        ):
            try:
                for first, last, digest in json.loads(payload).get("runs", []):
                    runs[int(first)] = (int(last), str(digest))
            except (ValueError, TypeError, AttributeError):
                continue  # an edited sweep event: the walk fails at its hash anyway
    return runs


def verify_chain(store: Store) -> VerifyResult:
    walker = _Walker(swept_runs(store))
    broken = _walk(store, walker, None)
    if broken is not None:
        return broken
    # The head is read after the walk: every event committed so far has an id <= the
    # head, because the head moves in the same transaction as the insert.
    with store.session(write=False) as session:
        head = session.execute(
            select(AuditHead.last_id, AuditHead.last_hash).where(AuditHead.id == _HEAD_ID)
        ).one_or_none()
    if head is None:
        return VerifyResult(False, walker.checked, None, "the chain head record is missing")
    if walker.last_id > head.last_id:
        return VerifyResult(
            False,
            walker.checked,
            int(head.last_id) + 1,
            f"events after {head.last_id} were added outside the chain head",
        )
    if walker.last_id < head.last_id:
        # Events appended while we walked: check them too, up to the head we just read.
        broken = _walk(store, walker, int(head.last_id))
        if broken is not None:
            return broken
        if walker.last_id < head.last_id:
            return VerifyResult(
                False,
                walker.checked,
                walker.last_id + 1,
                f"events {walker.last_id + 1}..{head.last_id} are missing (log truncated)",
            )
    if walker.last_hash != head.last_hash:
        return VerifyResult(
            False, walker.checked, walker.last_id, "the last event does not match the chain head"
        )
    if walker.skipped:
        return VerifyResult(
            True,
            walker.checked,
            None,
            f"chain intact ({walker.skipped} events deleted by retention sweeps, "
            "each recorded in a retention.swept event)",
        )
    return VerifyResult(True, walker.checked, None, "chain intact")
