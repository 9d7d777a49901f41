"""Every session and action lands in the store's hash chain, as the client saw it."""

from __future__ import annotations

import json
import sqlite3
import struct
import time
import uuid
from typing import Any

import psycopg
import pytest

from tests.integration.conftest import Gateway, admin_conn
from tests.integration.pg_cluster import RawClient
from wardgate.postgres.codec import build


def _session_of(gw: Gateway, application_name: str, timeout: float = 10.0) -> dict[str, Any]:
    """The recorded session with this application_name, once its end is written."""
    deadline = time.monotonic() + timeout
    while True:
        rows = json.loads(gw.cli("sessions", "list", "--json", "--limit", "200").stdout)
        for row in rows:
            if row["application_name"] == application_name and row["ended_at"] is not None:
                detail = json.loads(gw.cli("sessions", "show", row["id"], "--json").stdout)
                assert isinstance(detail, dict)
                return detail
        if time.monotonic() > deadline:
            raise AssertionError(f"session {application_name!r} not recorded: {rows}")
        time.sleep(0.2)


def test_session_and_actions_are_recorded(gateway: Gateway) -> None:
    app = f"audit-{time.monotonic_ns()}"
    with psycopg.connect(gateway.dsn("agent", application_name=app), autocommit=True) as conn:
        conn.execute("select 1 as a; select 2 as b", prepare=False)
        conn.execute("select %s::int + %s::int", (40, 2))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("create table audit_nope (a int)")
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("select * from audit_missing_table")

    s = _session_of(gateway, app)
    assert s["principal"] == "agent"
    assert s["principal_kind"] == "agent"
    assert s["sponsor"] == "dev"
    assert s["connection"] == "it"
    assert s["client_addr"] == "127.0.0.1"
    assert s["protocol"] == "postgres"
    actions = s["actions"]
    texts = [a["text"] for a in actions]
    assert "select %s::int + %s::int" not in texts  # psycopg sends $1 placeholders
    bound = next(a for a in actions if a["text"] == "select $1::int + $2::int")
    assert bound["params"] == ["40", "2"]
    assert bound["status"] == "ok"
    assert bound["rows"] == 1
    assert bound["verdict"]["decision"] == "allow"
    blocked = next(a for a in actions if "audit_nope" in a["text"])
    assert blocked["status"] == "blocked"
    assert blocked["verdict"]["decision"] == "block"
    assert blocked["verdict"]["rule"] == "role:reader"
    failed = next(a for a in actions if "audit_missing_table" in a["text"])
    assert failed["status"] == "error"
    assert failed["sqlstate"] == "42P01"
    assert s["blocked_count"] >= 1
    # Each statement of a multi-statement string is its own action.
    assert "select 1 as a" in texts and "select 2 as b" in texts
    for a in actions:
        assert a["duration_ms"] is None or a["duration_ms"] >= 0


def test_audit_verify_detects_an_edited_record(own_gateway: Gateway) -> None:
    gw = own_gateway
    with psycopg.connect(gw.dsn("dev", application_name="tamper"), autocommit=True) as conn:
        for i in range(5):
            conn.execute(f"select {i}")
    _session_of(gw, "tamper")
    ok = gw.cli("audit", "verify")
    assert ok.stdout.startswith("ok:"), ok.stdout

    store_path = gw.env["WARDGATE_STORE"].removeprefix("sqlite:///")
    db = sqlite3.connect(store_path)
    try:
        (victim,) = db.execute(
            "select id from audit_events where type = 'action' order by id limit 1 offset 2"
        ).fetchone()
        db.execute(
            "update audit_events set payload = replace(payload, 'select 2', 'select 9') where id = ?",
            (victim,),
        )
        db.commit()
    finally:
        db.close()
    broken = gw.cli("audit", "verify", check=False)
    assert broken.returncode == 1
    assert f"BROKEN at event {victim}" in broken.stdout


def test_sql_prepare_and_deallocate_keep_statement_names_true(gateway: Gateway) -> None:
    """A name dropped with DEALLOCATE and re-made with SQL PREPARE is judged and recorded
    as what it now prepares, not as what a Parse under that name once held."""
    app = f"audit-names-{time.monotonic_ns()}"
    with psycopg.connect(gateway.dsn("dev", application_name=app), autocommit=True) as conn:
        conn.execute("create temp table names_t (a int)")
        pg = conn.pgconn
        assert pg.prepare(b"s1", b"select 1").status == psycopg.pq.ExecStatus.COMMAND_OK
        conn.execute("deallocate s1")
        conn.execute("prepare s1 as insert into names_t values (42)")
        assert pg.exec_prepared(b"s1", []).status == psycopg.pq.ExecStatus.COMMAND_OK
        conn.execute("discard all")
        assert conn.execute("select count(*) from pg_prepared_statements").fetchone() == (0,)

    actions = _session_of(gateway, app)["actions"]
    executed = [a for a in actions if a["status"] == "ok" and a["command"] == "INSERT"]
    assert [a["text"] for a in executed] == ["prepare s1 as insert into names_t values (42)"]
    assert executed[0]["rows"] == 1
    assert executed[0]["statements"][0]["klass"] == "write"


def _extended(sql: str) -> bytes:
    """Parse, Bind, Execute of an unnamed statement, then Sync: one pipelined batch."""
    bind_body = b"\0\0" + b"\0\0" + b"\0\0" + b"\0\0"  # portal, statement, no formats/params
    execute_body = b"\0" + b"\0\0\0\0"
    return (
        build.parse("", sql)
        + b"B" + struct.pack("!i", 4 + len(bind_body)) + bind_body
        + b"E" + struct.pack("!i", 4 + len(execute_body)) + execute_body
        + build.sync()
    )  # fmt: skip


def test_a_batch_rolled_back_at_sync_is_recorded_so_and_the_next_keeps_its_answers(
    gateway: Gateway, it_database: str
) -> None:
    """A deferred constraint fails at the implicit commit of Sync: the insert before it
    ran ("INSERT 0 1") but was rolled back, and the batches pipelined behind it still get
    their own answers (the blocked DROP its 42501, not a stray parse error)."""
    suffix = uuid.uuid4().hex[:8]
    parent, child = f"defer_parent_{suffix}", f"defer_child_{suffix}"
    with admin_conn(it_database) as admin:
        admin.execute(f"create table {parent} (id int primary key)")
        admin.execute(
            f"create table {child} (id int, pid int references {parent} deferrable initially deferred)"
        )
    app = f"audit-defer-{suffix}"
    with RawClient(gateway.port) as client:
        client.login("dev", gateway.token("dev"), "it", application_name=app)
        client.send(
            _extended(f"insert into {child} values (1, 999)")
            + _extended(f"drop table {parent}")
            + _extended("select 'after'")
        )
        batches: list[list[Any]] = [[] for _ in range(3)]
        for batch in batches:
            while not batch or batch[-1].type != "Z":
                batch.append(client.read_message())
        client.send(build.terminate())
    first, second, third = (
        [(m.type, m.fields.get("C") if m.type == "E" else None) for m in b] for b in batches
    )
    assert first == [("1", None), ("2", None), ("C", None), ("E", "23503"), ("Z", None)]
    assert ("E", "42501") in second and second[-1] == ("Z", None)
    assert [t for t, _ in third] == ["1", "2", "D", "C", "Z"]

    actions = _session_of(gateway, app)["actions"]
    insert = next(a for a in actions if a["text"].startswith("insert into"))
    assert insert["status"] == "error" and insert["sqlstate"] == "23503"
    assert insert["error"].startswith("rolled back: the transaction failed at commit")
    drop = next(a for a in actions if a["text"].startswith("drop table"))
    assert drop["status"] == "blocked"
    with admin_conn(it_database) as admin:
        assert admin.execute(f"select count(*) from {child}").fetchone() == (0,)
