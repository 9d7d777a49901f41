"""Commit 72e9351 hands the records of a server chunk to the recorder once the chunk is
written to the client (`RelayState._deferred`). These pin what must not change: the
records of a chunk and of the session end that chunk causes keep their order in the
chain, none is lost, and a kill -9 right after the traffic still leaves one record per
statement. Each passes with and without that commit (its parent, 84a839c): no case was
found where the deferral changes the audit log or the journal."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.integration.conftest import Gateway, admin_conn, base_config, make_gateway

# Loaded by the gateway's interpreter (sitecustomize): a log line at each `_hold`, and a
# bug in the relay, raised right after the server's CommandComplete of a statement
# naming wg_boom was matched (its outcome made, the chunk's records not yet submitted).
_BOOM = """
from wardgate.postgres import replies

_orig = replies.ServerReplies._on_server_message_unmasked

def _boom(self, msg, head):
    marked = (
        msg.type == 67
        and head is not None
        and head.acts
        and head.index < len(head.acts)
        and "wg_boom" in head.acts[head.index].action.text
    )
    out = _orig(self, msg, head)
    if marked:
        raise RuntimeError("wg_boom: a bug in the relay")
    return out

replies.ServerReplies._on_server_message_unmasked = _boom

from wardgate.postgres import results
import logging

_hold = results.MaskedResults._hold

def _noted_hold(self, items, oids):
    logging.getLogger("wardgate.postgres").warning("wg_hold: %s", self.session_id)
    return _hold(self, items, oids)

results.MaskedResults._hold = _noted_hold
"""


@pytest.fixture(scope="module")
def masked_table(it_database: str) -> Iterator[str]:
    """A table with a masked column, there before the gateway starts (in its catalog
    snapshot; its column names are looked up at its first result)."""
    tbl = f"wg_masked_{uuid.uuid4().hex[:6]}"
    with admin_conn(it_database) as admin:
        admin.execute(f"create table {tbl} (id int, password text)")
        admin.execute(f"insert into {tbl} select g, 'hunter2-' || g from generate_series(1, 50) g")
        admin.execute(f"grant all on {tbl} to public")
        admin.commit()
    yield tbl
    with admin_conn(it_database) as admin:
        admin.execute(f"drop table {tbl}")
        admin.commit()


@pytest.fixture(scope="module")
def gw(
    it_database: str, masked_table: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """One gateway for the module: agents' results masked (column rule), and the relay
    bug of `_BOOM` loaded (it fires only on statements naming wg_boom)."""
    tmp = tmp_path_factory.mktemp("deferred")
    (tmp / "hook").mkdir()
    (tmp / "hook" / "sitecustomize.py").write_text(_BOOM)
    config = base_config(it_database) + (
        "masking:\n  rules:\n"
        '    - {name: passwords, principal_kinds: [agent], columns: ["*.password"],'
        " strategy: redact}\n"
    )
    gateway = make_gateway(tmp / "gw", config)
    gateway.env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(tmp / "hook"), gateway.env.get("PYTHONPATH", "")) if p
    )
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()


def _events(gw: Gateway, app: str, timeout: float = 15.0) -> list[dict[str, Any]]:
    """The chain events of the session named ``app``, in chain order (once it ended)."""
    db = gw.workdir / "store.db"
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.closing(sqlite3.connect(db)) as conn:
            row = conn.execute(
                "select id from sessions where application_name = ?", (app,)
            ).fetchone()
            events = (
                [
                    {"type": t, "session": row[0], **json.loads(p)}
                    for t, p in conn.execute(
                        "select type, payload from audit_events where session_id = ? order by id",
                        (row[0],),
                    )
                ]
                if row is not None
                else []
            )
        if events and events[-1]["type"] == "session.end":
            return events
        if time.monotonic() > deadline:
            raise AssertionError(f"session {app!r} not recorded: {events}")
        time.sleep(0.1)


def _actions(events: list[dict[str, Any]]) -> list[tuple[int, str, str]]:
    return [(e["seq"], e["text"], e["status"]) for e in events if e["type"] == "action"]


def _seqs_in_order(events: list[dict[str, Any]]) -> None:
    seqs = [e["seq"] for e in events if e["type"] == "action"]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
    assert [e["type"] for e in events].count("session.end") == 1
    assert events[-1]["type"] == "session.end", events[-1]


def test_divergence_mid_chunk_ends_the_session_after_its_records(
    gw: Gateway, it_database: str
) -> None:
    """A ParameterStatus the gateway cannot follow, in the middle of a server chunk, ends
    the session from inside the relay (`_fatal`, `finish`): the statements before it,
    the ones it interrupts, then the session's end, in that order, nothing after."""
    fn = f"wg_scs_{uuid.uuid4().hex[:6]}"
    with admin_conn(it_database) as admin:
        admin.execute(
            f"create function {fn}() returns int language plpgsql as "
            "$$ begin perform set_config('standard_conforming_strings', 'off', false); "
            "return 1; end $$"
        )
        admin.commit()
    app = f"div_{uuid.uuid4().hex[:6]}"
    try:
        conn = psycopg.connect(gw.dsn("dev", application_name=app), autocommit=True)
        try:
            conn.execute("select 1")
            with pytest.raises(psycopg.errors.FeatureNotSupported):
                conn.execute(f"select 2; select {fn}(); select 3", prepare=False)
        finally:
            conn.close()
        events = _events(gw, app)
    finally:
        with admin_conn(it_database) as admin:
            admin.execute(f"drop function {fn}()")
            admin.commit()
    # PostgreSQL reports the setting after the last CommandComplete, before
    # ReadyForQuery: the whole string ran, then the session ends, in the same chunk.
    assert _actions(events) == [
        (1, "select 1", "ok"),
        (2, "select 2", "ok"),
        (3, f"select {fn}()", "ok"),
        (4, "select 3", "ok"),
    ], events
    assert events[-1]["status"] == "divergence", events[-1]
    _seqs_in_order(events)


def test_server_fatal_answer_then_close(gw: Gateway, it_database: str) -> None:
    """The server ends the session (pg_terminate_backend) while a statement runs: its
    FATAL error answers the statement, then the server closes. The statement's record,
    then the session's end."""
    app = f"fatal_{uuid.uuid4().hex[:6]}"
    conn = psycopg.connect(gw.dsn("dev", application_name=app), autocommit=True)
    try:
        pid = conn.execute("select pg_backend_pid()").fetchone()
        assert pid is not None
        errors: list[BaseException] = []

        def run() -> None:
            try:
                conn.execute("select pg_sleep(20)")
            except BaseException as exc:  # noqa: BLE001 - inspected below
                errors.append(exc)

        t = threading.Thread(target=run)
        t.start()
        with admin_conn(it_database) as admin:
            deadline = time.monotonic() + 10
            while not admin.execute(
                "select 1 from pg_stat_activity where pid = %s and query like 'select pg_sleep%%'",
                (pid[0],),
            ).fetchone():
                assert time.monotonic() < deadline
                time.sleep(0.05)
            admin.execute("select pg_terminate_backend(%s)", (pid[0],))
        t.join(15)
        assert errors and isinstance(errors[0], psycopg.OperationalError), errors
    finally:
        conn.close()
    events = _events(gw, app)
    acts = [e for e in events if e["type"] == "action"]
    assert [(a["text"], a["status"], a["sqlstate"]) for a in acts][-1] == (
        "select pg_sleep(20)",
        "error",
        "57P01",
    ), acts
    assert events[-1]["status"] == "upstream_lost", events[-1]
    _seqs_in_order(events)


def test_pipelined_batches_with_errors_keep_their_order(gw: Gateway) -> None:
    """Several Executes and Syncs in one pipeline, an error in the first batch: the
    server answers in few chunks; each statement gets one record, in order."""
    app = f"pipe_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(gw.dsn("dev", application_name=app), autocommit=True) as conn:
        cur = conn.cursor()
        with pytest.raises(psycopg.errors.DivisionByZero), conn.pipeline() as p:
            cur.execute("select %s::int", (1,))
            cur.execute("select 1 / %s::int", (0,))
            cur.execute("select %s::int + 1", (3,))
            p.sync()
        with conn.pipeline() as p:
            cur.execute("select %s::int + 2", (4,))
            cur.execute("select %s::int + 3", (5,))
            p.sync()
            assert cur.fetchone() == (8,)
    events = _events(gw, app)
    # The Executes' outcomes wait on their Sync (a failed implicit commit would undo
    # them); what failed or was skipped is recorded at once. 1 / 0 with a constant
    # parameter fails at Bind (the custom plan folds it): its Execute never runs, and
    # its record carries the error the client got.
    assert _actions(events) == [
        (2, "select 1 / $1::int", "error"),
        (3, "select $1::int + 1", "not_executed"),
        (1, "select $1::int", "ok"),
        (4, "select $1::int + 2", "ok"),
        (5, "select $1::int + 3", "ok"),
    ], events
    assert events[-1]["type"] == "session.end"
    failed = next(e for e in events if e.get("seq") == 2)
    assert (failed["sqlstate"], failed["error"]) == ("22012", "division by zero"), failed
    assert next(e for e in events if e.get("seq") == 3)["error"] is None


def test_a_statement_the_server_refuses_at_parse_is_recorded_with_its_error(
    gw: Gateway,
) -> None:
    """The server refuses a statement at its Parse (no such table): what the client
    sees, a 42P01 error, is the record of that statement; the statement after it in the
    batch is skipped by the server and recorded not_executed."""
    app = f"parse_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(gw.dsn("dev", application_name=app), autocommit=True) as conn:
        cur = conn.cursor()
        with pytest.raises(psycopg.errors.UndefinedTable), conn.pipeline() as p:
            cur.execute("select * from no_such_table_here where id = %s", (1,))
            cur.execute("select %s::int + 1", (3,))
            p.sync()
    events = _events(gw, app)
    acts = [(e["text"], e["status"], e["sqlstate"]) for e in events if e["type"] == "action"]
    assert acts == [
        ("select * from no_such_table_here where id = $1", "error", "42P01"),
        ("select $1::int + 1", "not_executed", None),
    ], acts


def test_masked_rows_held_for_column_names_then_error(gw: Gateway, masked_table: str) -> None:
    """A masked session whose result needs column names the gateway has not looked up
    yet: the server's stream is held (`_hold`) and relayed later outside any deferred
    chunk, and the rest of the string fails. One record per statement, in order, the
    recorded rows masked as the client got them."""
    tbl = masked_table
    app = f"mask_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(gw.dsn("agent", application_name=app), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute(
                f"select 0; select id, password from {tbl} order by id; "
                "select 1 / (select count(*) - count(*) from pg_class); select 3",
                prepare=False,
            )
        rows = conn.execute(f"select id, password from {tbl} order by id").fetchall()
        assert len(rows) == 50 and not any("hunter2" in str(r) for r in rows), rows[:3]
    events = _events(gw, app)
    assert f"wg_hold: {events[0]['session']}" in gw.log  # the stream was held
    acts = [e for e in events if e["type"] == "action"]
    assert [(a["seq"], a["status"]) for a in acts] == [
        (1, "ok"),
        (2, "ok"),
        (3, "error"),
        (4, "not_executed"),
        (5, "ok"),
    ], _actions(events)
    assert acts[1]["rows"] == 50 and acts[4]["rows"] == 50
    assert acts[1]["result"]["recorded_rows"] == 50
    assert b"hunter2" not in base64.b64decode(acts[1]["result"]["data"])
    assert "hunter2" not in json.dumps(events)
    _seqs_in_order(events)


def test_exception_inside_relay_items_loses_no_record(gw: Gateway) -> None:
    """An exception raised inside `_relay_items` (`_BOOM`) after a statement's outcome
    was made: that outcome and the earlier ones of the chunk still reach the store,
    before the session's end (the transport closes: the session ends upstream_lost)."""
    app = f"boom_{uuid.uuid4().hex[:6]}"
    conn = psycopg.connect(gw.dsn("dev", application_name=app), autocommit=True)
    try:
        conn.execute("select 1")
        with pytest.raises(psycopg.OperationalError):
            # One server chunk: the CommandComplete of each.
            conn.execute("select 2; select 3 as wg_boom; select 4", prepare=False)
    finally:
        conn.close()
    events = _events(gw, app)
    assert "wg_boom: a bug in the relay" in gw.log
    assert _actions(events) == [
        (1, "select 1", "ok"),
        (2, "select 2", "ok"),
        (3, "select 3 as wg_boom", "ok"),  # made before the exception: not lost
        (4, "select 4", "interrupted"),  # closed by the session's end
    ], events
    assert events[-1]["status"] == "upstream_lost", events[-1]
    _seqs_in_order(events)


def test_copy_out_and_in_records(gw: Gateway, it_database: str) -> None:
    """COPY out (many CopyData chunks) and in: one record each, with its row count."""
    tbl = f"wg_copy_{uuid.uuid4().hex[:6]}"
    with admin_conn(it_database) as admin:
        admin.execute(f"create table {tbl} (n int)")
        admin.execute(f"grant all on {tbl} to public")
        admin.commit()
    app = f"copy_{uuid.uuid4().hex[:6]}"
    try:
        with psycopg.connect(gw.dsn("dev", application_name=app), autocommit=True) as conn:
            cur = conn.cursor()
            with cur.copy("copy (select g from generate_series(1, 20000) g) to stdout") as cp:
                data = b"".join(bytes(b) for b in cp)
            assert data.count(b"\n") == 20000
            with cur.copy(f"copy {tbl} from stdin") as cp:
                cp.write(data)
            conn.execute("select 1")
        events = _events(gw, app)
    finally:
        with admin_conn(it_database) as admin:
            admin.execute(f"drop table {tbl}")
            admin.commit()
    acts = [e for e in events if e["type"] == "action"]
    assert [(a["seq"], a["status"], a["command"], a["rows"]) for a in acts] == [
        (1, "ok", "COPY", 20000),
        (2, "ok", "COPY", 20000),
        (3, "ok", "SELECT", 1),
    ], _actions(events)
    _seqs_in_order(events)


def test_kill_9_right_after_pipelined_transactions(gw: Gateway, it_database: str) -> None:
    """pgbench-like transactions, each one pipelined batch (BEGIN, UPDATE, SELECT,
    INSERT, COMMIT and one Sync), then kill -9 as soon as the last reply is read. After
    the restart every statement has exactly one record; every one but the last batch's
    is ok (its outcome went into the journal with the next intent), and the database
    agrees. Last in the module: it kills the module's gateway (and starts it again)."""
    tbl = f"wg_deferred_{uuid.uuid4().hex[:6]}"
    with admin_conn(it_database) as admin:
        admin.execute(f"create table {tbl} (id int primary key, n int)")
        admin.execute(f"insert into {tbl} values (0, 0)")
        admin.execute(f"grant all on {tbl} to public")
        admin.commit()
    db = gw.workdir / "store.db"
    dsn = gw.dsn("dev")
    rounds = 60
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            cur = conn.cursor()
            for i in range(1, rounds + 1):
                with conn.pipeline() as p:
                    cur.execute("begin")
                    cur.execute(f"update {tbl} set n = n + %s where id = 0 /* u{i} */", (1,))
                    cur.execute(f"select n from {tbl} where id = 0 /* s{i} */")
                    cur.execute(f"insert into {tbl} values (%s, %s) /* i{i} */", (i, i))
                    cur.execute("commit")
                    p.sync()
            assert gw.proc is not None
            gw.proc.kill()  # right after the last reply
        gw.proc.wait()
        gw.proc = None
        gw.start()  # replays the journal
        with contextlib.closing(sqlite3.connect(db)) as conn:
            rows = conn.execute(
                "select json_extract(payload, '$.text'), json_extract(payload, '$.status') "
                "from audit_events where type = 'action' and json_extract(payload, '$.text') "
                "like ? order by id",
                (f"%{tbl}%",),
            ).fetchall()
        by_text: dict[str, list[str]] = {}
        for text, status in rows:
            by_text.setdefault(text, []).append(status)
        for i in range(1, rounds + 1):
            for tag in ("u", "s", "i"):
                (text,) = [t for t in by_text if t.endswith(f"/* {tag}{i} */")]
                statuses = set(by_text[text])  # replay is at-least-once: duplicates allowed
                assert len(statuses) == 1, (text, by_text[text])
                expected = {"ok"} if i < rounds else {"ok", "interrupted"}
                assert statuses <= expected, (text, by_text[text])
        with admin_conn(it_database) as admin:
            assert admin.execute(f"select n from {tbl} where id = 0").fetchone() == (rounds,)
        gw.cli("audit", "verify")
    finally:
        if gw.proc is None:
            gw.start()
        with admin_conn(it_database) as admin:
            admin.execute(f"drop table {tbl}")
            admin.commit()
