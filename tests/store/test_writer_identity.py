"""The recorder's writer writes exactly what it wrote before it encoded action payloads
by hand and went around SQLAlchemy's statement building: same payload text, hashes,
rows, session rows, order, and the same all-or-nothing failure.

``_ReferenceWriter`` is the writer as it was (``BatchWriter`` with the dict payloads,
``append_events`` through the ORM, Core session updates, and the JSON, storable-text
and hash helpers of that version), kept here as the specification. The same batches go
through it and through ``BatchWriter`` into the same store, emptied in between, and
every column of every row is compared.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.orm import Session

from wardgate.actions import Action, Decision, StatementInfo, Verdict
from wardgate.audit.action_json import action_json
from wardgate.audit.chain import GENESIS_HASH, json_value, verify_chain
from wardgate.audit.records import (
    ActionRecord,
    Record,
    RecordingRecord,
    SessionEnd,
    SessionRecord,
)
from wardgate.audit.responses import ResponseTap, SessionResults, response_payload
from wardgate.audit.writer import BatchWriter
from wardgate.identity.principals import Principal, PrincipalKind
from wardgate.store.db import Store
from wardgate.store.models import AuditEvent, AuditHead, Recording, SessionRow

# -- the writer as it was ---------------------------------------------------------------

_REF_JSON = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=str
)


def _ref_canonical_json(value: Any) -> str:
    text = _REF_JSON.encode(value)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _ref_storable(value: str) -> str:
    if "\x00" in value:
        value = value.replace("\x00", "\\x00")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _ref_hash(prev: str, id: int, ts: float, *fields: str) -> str:
    i, t = str(id), repr(float(ts))
    framed = f"{prev}\n{len(i)}:{i}\n{len(t)}:{t}\n" + "".join(f"{len(f)}:{f}\n" for f in fields)
    return hashlib.sha256(framed.encode("utf-8", "surrogatepass")).hexdigest()


def _ref_finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


_REF_COUNT = (
    update(SessionRow)
    .where(SessionRow.id == bindparam("b_id"))
    .values(
        action_count=SessionRow.action_count + bindparam("b_actions"),
        blocked_count=SessionRow.blocked_count + bindparam("b_blocked"),
    )
)
_REF_END = (
    update(SessionRow)
    .where(SessionRow.id == bindparam("b_id"))
    .values(ended_at=bindparam("b_ended_at"), status=bindparam("b_status"), error=bindparam("b_error"))
)  # fmt: skip

# (ts, type, session_id, principal, connection, payload dict)
_RefEvent = tuple[float, str, str, str, str, dict[str, Any]]


def _ref_action_payload(record: ActionRecord) -> dict[str, Any]:
    a, v = record.action, record.verdict
    return {
        "seq": record.seq, "kind": a.kind, "text": a.text, "params": list(a.params),
        "resolved": a.resolved,
        "verdict": {
            "decision": str(v.decision), "rule": v.rule, "rules": list(v.rules),
            "reason": v.reason, "enforced": v.enforced,
        },
        "statements": [
            {
                "klass": s.klass, "kinds": list(s.kinds), "error": s.error,
                "tables_read": list(s.tables_read),
                "tables_written": list(s.tables_written), "functions": list(s.functions),
            }
            for s in v.statements
        ],
        "status": record.status, "rows": record.rows, "command": record.command,
        "duration_ms": _ref_finite(record.duration_ms), "error": record.error,
        "sqlstate": record.sqlstate,
        **({"trace_id": record.trace_id} if record.trace_id is not None else {}),
        **({"output": record.output} if record.output is not None else {}),
        **(
            {"result": response_payload(record.result, record.rows, record.command)}
            if record.result is not None
            else {}
        ),
    }  # fmt: skip


class _ReferenceWriter:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._open: dict[str, tuple[str, str]] = {}

    def write(self, batch: list[Record]) -> None:
        starting = {
            r.id: (r.principal.name, r.connection) for r in batch if isinstance(r, SessionRecord)
        }
        with self._store.session() as session:
            events = [self._event(session, r, starting) for r in batch]
            self._update_sessions(session, batch)
            self._append(session, events)
        for r in batch:
            if isinstance(r, SessionRecord):
                self._open[r.id] = (r.principal.name, r.connection)
            elif isinstance(r, SessionEnd):
                self._open.pop(r.session_id, None)

    def _event(
        self, session: Session, record: Record, starting: dict[str, tuple[str, str]]
    ) -> _RefEvent:
        if isinstance(record, SessionRecord):
            p = record.principal
            return (record.started_at, "session.start", record.id, p.name, record.connection, {
                "protocol": record.protocol, "principal_kind": str(p.kind),
                "sponsor": p.sponsor, "groups": sorted(p.groups),
                "client_addr": record.client_addr,
                "application_name": record.application_name, "tls": record.tls,
            })  # fmt: skip
        if isinstance(record, RecordingRecord):
            cast = _ref_storable(record.cast)
            digest = hashlib.sha256(cast.encode("utf-8")).hexdigest()
            session.execute(
                self._store.insert(Recording)
                .values(
                    session_id=_ref_storable(record.session_id), seq=record.seq,
                    started_at=record.started_at, cast=cast, sha256=digest,
                )
                .on_conflict_do_nothing(index_elements=["session_id", "seq"])
            )  # fmt: skip
            who = self._identity(session, record.session_id, starting)
            payload = {"seq": record.seq, "sha256": digest, "bytes": len(cast)}
            return (record.started_at, "recording", record.session_id, *who, payload)
        if isinstance(record, ActionRecord):
            a = record.action
            payload = _ref_action_payload(record)
            return (
                record.started_at,
                "action",
                record.session_id,
                a.principal.name,
                a.connection,
                payload,
            )
        who = self._identity(session, record.session_id, starting)
        payload = {"status": record.status, "error": record.error}
        return (record.ended_at, "session.end", record.session_id, *who, payload)

    def _identity(
        self, session: Session, session_id: str, starting: dict[str, tuple[str, str]]
    ) -> tuple[str, str]:
        known = starting.get(session_id) or self._open.get(session_id)
        if known is not None:
            return known
        row = session.execute(
            select(SessionRow.principal, SessionRow.connection).where(
                SessionRow.id == _ref_storable(session_id)
            )
        ).one_or_none()
        return (str(row.principal), str(row.connection)) if row is not None else ("", "")

    def _update_sessions(self, session: Session, batch: list[Record]) -> None:
        starts: list[dict[str, Any]] = []
        counts: dict[str, list[int]] = {}
        ends: list[SessionEnd] = []
        for r in batch:
            if isinstance(r, SessionRecord):
                p = r.principal
                starts.append({
                    "id": _ref_storable(r.id), "protocol": _ref_storable(r.protocol),
                    "principal": _ref_storable(p.name), "principal_kind": str(p.kind),
                    "sponsor": _ref_storable(p.sponsor) if p.sponsor else p.sponsor,
                    "connection": _ref_storable(r.connection),
                    "client_addr": _ref_storable(r.client_addr),
                    "application_name": _ref_storable(r.application_name), "tls": r.tls,
                    "started_at": r.started_at, "status": "active", "action_count": 0,
                    "blocked_count": 0, "gateway": r.gateway,
                })  # fmt: skip
            elif isinstance(r, ActionRecord):
                c = counts.setdefault(r.session_id, [0, 0])
                c[0] += 1
                c[1] += r.status == "blocked"
            elif isinstance(r, SessionEnd):
                ends.append(r)
        conn = session.connection()
        if starts:
            stmt = self._store.insert(SessionRow).on_conflict_do_nothing(index_elements=["id"])
            conn.execute(stmt, starts)
        if counts:
            conn.execute(_REF_COUNT, [
                {"b_id": _ref_storable(sid), "b_actions": n, "b_blocked": b}
                for sid, (n, b) in counts.items()
            ])  # fmt: skip
        if ends:
            conn.execute(_REF_END, [
                {
                    "b_id": _ref_storable(e.session_id), "b_ended_at": e.ended_at,
                    "b_status": _ref_storable(e.status),
                    "b_error": _ref_storable(e.error) if e.error is not None else None,
                }
                for e in ends
            ])  # fmt: skip

    def _append(self, session: Session, events: list[_RefEvent]) -> None:
        head = session.execute(
            select(AuditHead.last_id, AuditHead.last_hash).where(AuditHead.id == 1).with_for_update()
        ).one()  # fmt: skip
        last_id, prev = int(head.last_id), str(head.last_hash)
        rows = []
        for ts, type_, sid, principal, connection, payload in events:
            last_id += 1
            sid, principal = _ref_storable(sid), _ref_storable(principal)
            connection = _ref_storable(connection)
            text = _ref_canonical_json(dict(payload))
            digest = _ref_hash(prev, last_id, ts, type_, sid, principal, connection, text)
            rows.append((last_id, ts, type_, sid, principal, connection, text, prev, digest))
            prev = digest
        conn = session.connection()
        mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        conn.exec_driver_sql(
            f"INSERT INTO audit_events (id, ts, type, session_id, principal, connection, "
            f"payload, prev_hash, hash) VALUES ({', '.join([mark] * 9)})",
            rows,
        )
        session.execute(
            update(AuditHead).where(AuditHead.id == 1).values(last_id=last_id, last_hash=prev)
        )


# -- the records ----------------------------------------------------------------------

LONE = "\udcff\ud800"  # undecodable client bytes, as surrogateescape leaves them
AGENT = Principal("bøt-\x00" + LONE, PrincipalKind.AGENT, frozenset({"agents", "z", "é"}), "ålice")
USER = Principal("alice", PrincipalKind.USER, frozenset())
READ = StatementInfo("read", ("select",), "SELECT 1", None, ("public.t", "ü"), (), ("now", "f\x00"))
VERDICTS = [
    Verdict(Decision.ALLOW, "role:rw", "read allowed", (READ,)),
    Verdict(
        Decision.BLOCK,
        "no-drop",
        'Destructive "DDL" \\ blocked\n\t' + LONE,
        (StatementInfo("ddl", ("drop", "π"), error="syntax\x00error " + LONE), READ),
        ("no-drop", "other"),
    ),
    Verdict(Decision.REVIEW, "r", "needs ☃ review", (), ("r",), enforced=False),
    Verdict(Decision.ALLOW, "empty", "", ()),
]


def _data_row(*values: bytes | None) -> bytes:
    body = len(values).to_bytes(2, "big")
    for v in values:
        body += (-1).to_bytes(4, "big", signed=True) if v is None else len(v).to_bytes(4, "big") + v
    return b"D" + (4 + len(body)).to_bytes(4, "big") + body


def _captured(
    chunks: list[bytes], rows: int = 100, room: int = 1 << 16, kind: str = "pg"
) -> dict[str, Any]:
    tap = ResponseTap(
        SessionResults(rows, room, 1 << 20), "UTF8" if kind == "pg" else "utf-8", kind
    )
    for chunk in chunks:
        tap.feed(chunk)
    return tap.summary()


def _records() -> list[list[Record]]:
    """Batches: sessions of several kinds, actions of every shape, recordings, ends."""
    t = 1_765_000_000.123456
    s1 = SessionRecord(
        "s_1", "postgres", AGENT, "orders\x00" + LONE, "10.0.0.7:5123", t, "psql ✓", True, "gw-a"
    )
    s2 = SessionRecord("s_2" + LONE, "ssh", USER, "box", "[::1]:22", t + 1)
    s3 = SessionRecord("s_3", "mcp", USER, "db", "", t + 2, "", False, None)
    shared = VERDICTS[0]  # one object for many records, as the gate's cache hands it out
    rows3 = _data_row(b"1", None, "é".encode()) * 3
    actions: list[Record] = []
    for seq, (sid, verdict, extra) in enumerate([
        ("s_1", shared, {}),
        ("s_1", shared, {"result": _captured([rows3[:7], rows3[7:]]), "rows": 3, "command": "SELECT"}),
        ("s_1", shared, {"result": _captured([rows3], rows=2), "rows": 3, "command": "SELECT"}),
        ("s_1", shared, {"result": _captured([rows3], room=20), "rows": 3, "command": "SELECT"}),
        ("s_1", shared, {"result": _captured([b"d\x00\x00\x00\x07ab\xff", rows3]), "rows": 4, "command": "COPY"}),
        ("s_1", VERDICTS[1], {"status": "blocked", "error": "refused \x00" + LONE, "sqlstate": "42501"}),
        ("s_2" + LONE, VERDICTS[2], {"output": "out ☃\x00" + LONE, "trace_id": "tr-1"}),
        ("s_2" + LONE, VERDICTS[3], {"result": _captured(["héllo".encode(), b"\xff"], kind="text")}),
        ("s_3", Verdict(Decision.ALLOW, "role:rw", "read allowed", (READ,)), {"duration": float("nan")}),
        ("s_3", shared, {"duration": float("inf"), "trace_id": ""}),
        ("s_3", shared, {"duration": -0.0, "status": "interrupted", "error": "gone"}),
        ("s_3", shared, {"duration": 3, "rows": 0, "command": "INSERT 0 0"}),
        ("s_1", shared, {"text": "SELECT '\"\\\n\u2028' " + LONE + "\x00", "params": ("x", None, "é", LONE, "\x00", b"raw")}),
        ("s_1", shared, {"resolved": "SELECT $1 -- " + LONE, "params": ()}),
        ("s_9", shared, {}),  # a session no batch started
    ]):  # fmt: skip
        action = Action(
            AGENT if sid == "s_1" else USER, "orders", "postgres", "sql",
            extra.get("text", f"SELECT {seq}"), extra.get("params", (str(seq),)), sid,
            resolved=extra.get("resolved"),
        )  # fmt: skip
        actions.append(
            ActionRecord(
                sid, seq, action, verdict, t + seq / 7, extra.get("duration", seq / 3),
                extra.get("status", "ok"), extra.get("rows"), extra.get("command"),
                extra.get("error"), extra.get("sqlstate"), extra.get("trace_id"),
                extra.get("output"), extra.get("result"),
            )
        )  # fmt: skip
    cast = '{"version": 2}\n[0.1, "o", "h\u00e9 ' + LONE + '\\u0000"]\n'
    return [
        [s1, s2, *actions[:6], RecordingRecord("s_2" + LONE, 0, t + 3, cast)],
        [s3, *actions[6:], RecordingRecord("s_1", 1, t + 4, "plain")],
        [s1, actions[0]],  # a retried batch: the session row stays, the events repeat
        [
            RecordingRecord("s_8", 0, t + 5, "x"),  # nobody's session
            SessionEnd("s_1", t + 9, "closed"),
            SessionEnd("s_2" + LONE, t + 9, "error", "lost \x00 " + LONE),
        ],
        [actions[3], SessionEnd("s_3", t + 10, "closed")],  # written by a fresh writer
    ]


# -- the comparison -------------------------------------------------------------------

_TABLES = (AuditEvent, AuditHead, SessionRow, Recording)


def _snapshot(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    with store.session(write=False) as s:
        for model in _TABLES:
            table = model.__table__
            key = list(table.primary_key.columns)
            out[table.name] = [tuple(r) for r in s.execute(select(table).order_by(*key))]
    return out


def _reset(store: Store) -> None:
    with store.session() as s:
        for model in (AuditEvent, SessionRow, Recording):
            s.execute(delete(model))
        s.execute(update(AuditHead).values(last_id=0, last_hash=GENESIS_HASH))


def _write_all(store: Store, make: Any) -> list[str]:
    """Every batch, pickled and unpickled as the recorder process gets it; the last by a
    new writer (a restarted recorder). Returns how each batch ended."""
    batches = _records()
    outcomes = []
    writer = make(store)
    for i, batch in enumerate(batches):
        if i == len(batches) - 1:
            writer = make(store)
        try:
            writer.write(pickle.loads(pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)))
        except Exception as exc:  # noqa: BLE001 - compared, not hidden
            outcomes.append(f"{type(exc).__name__}: {exc}")
        else:
            outcomes.append("ok")
    return outcomes


def test_writer_rows_are_those_of_the_reference(store: Store) -> None:
    assert _write_all(store, _ReferenceWriter) == ["ok"] * 5
    expected = _snapshot(store)
    _reset(store)
    assert _write_all(store, BatchWriter) == ["ok"] * 5
    got = _snapshot(store)
    assert len(got["audit_events"]) == 9 + 11 + 2 + 3 + 2 and len(got["sessions"]) == 3
    for table in expected:
        assert got[table] == expected[table], table
    check = verify_chain(store)
    assert check.ok and check.checked == len(got["audit_events"]), check.reason


@pytest.mark.parametrize("where", ["result", "params"])
def test_a_batch_that_cannot_be_encoded_fails_whole_as_before(store: Store, where: str) -> None:
    """A NaN the payload cannot hold (JSON has none): the same error, and nothing of the
    batch is written, by either writer."""
    t = 1_765_000_000.0
    start = SessionRecord("s_1", "postgres", USER, "db", "", t)
    bad: dict[str, Any] = {"result": {"raw": b"", "sha256": float("nan")}}
    if where == "params":
        bad = {"params": ([float("nan")],)}
    action = Action(USER, "db", "postgres", "sql", "SELECT 1", bad.get("params", ()), "s_1")
    record = ActionRecord("s_1", 1, action, VERDICTS[0], t, 1.0, "ok", result=bad.get("result"))
    outcomes = []
    for make in (_ReferenceWriter, BatchWriter):
        _reset(store)
        make(store).write([start])
        before = _snapshot(store)
        with pytest.raises(ValueError) as caught:
            make(store).write([start, record, SessionEnd("s_1", t + 1)])
        assert _snapshot(store) == before
        outcomes.append(str(caught.value))
    assert outcomes[0] == outcomes[1]


# -- one action payload, any values ----------------------------------------------------

# Surrogates, NUL, quotes, backslashes, controls and line separators among the rest.
_TEXT = st.text(
    st.characters(exclude_categories=()) | st.sampled_from('\udcff\ud800\x00"\\\n\u2028')
)
_OPT = st.none() | _TEXT
_STATEMENT = st.builds(
    StatementInfo, _TEXT, st.tuples(_TEXT), _TEXT, _OPT, st.lists(_TEXT).map(tuple),
    st.lists(_TEXT, max_size=2).map(tuple), st.lists(_TEXT, max_size=2).map(tuple),
)  # fmt: skip
_VERDICT = st.builds(
    Verdict, st.sampled_from(list(Decision)), _TEXT, _TEXT,
    st.lists(_STATEMENT, max_size=3).map(tuple), st.lists(_TEXT, max_size=2).map(tuple),
    st.booleans(),
)  # fmt: skip
_RESULT = st.none() | st.fixed_dictionaries(
    {
        "raw": st.binary(max_size=64) | st.sampled_from([_data_row(b"1", None) * 2]),
        "encoding": st.sampled_from(["UTF8", "utf-8", "latin-1"]),
        "max_rows": st.integers(0, 3),
        "stream_bytes": st.integers(0, 80),
        "sha256": _TEXT,
        "kind": st.sampled_from(["pg", "text"]),
    }
)
_ACTION = st.builds(
    Action, st.just(USER), _TEXT, st.just("postgres"), _TEXT, _TEXT,
    st.lists(_OPT, max_size=3).map(tuple), _TEXT, st.just(""), _OPT,
)  # fmt: skip
_RECORD = st.builds(
    ActionRecord, _TEXT, st.integers(), _ACTION, _VERDICT, st.floats(),
    st.floats() | st.integers(-5, 5), st.sampled_from(["ok", "blocked", "error"]),
    st.none() | st.integers(0, 4), st.none() | st.sampled_from(["SELECT", "COPY", "x"]),
    _OPT, _OPT, _OPT, _OPT, _RESULT,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(_RECORD)
def test_action_payload_is_canonical_json_of_the_reference_dict(record: ActionRecord) -> None:
    assert action_json(record, {}) == _ref_canonical_json(_ref_action_payload(record))


def test_json_value_fails_on_a_cycle_as_the_encoder_does() -> None:
    cycle: list[Any] = [1]
    cycle.append({"a": cycle})
    messages = []
    for encode in (json_value, _REF_JSON.encode):
        with pytest.raises(ValueError) as caught:
            encode({"x": [cycle]})
        messages.append(str(caught.value))
    assert messages[0] == messages[1] == "Circular reference detected"
