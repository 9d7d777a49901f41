"""The cheaper per-statement path of the PostgreSQL relay (one-meaning fast paths for
Bind and Execute, batch-ordered name lookups, weights kept per name, the unmasked reply
loop, text parameters decoded directly, action payloads written as JSON text) judges and
records what it did before. Each test drives the gateway with protocol bytes of its own
and checks the server's state (the table) and the audit rows, not only the answer."""

from __future__ import annotations

import json
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.conftest import Gateway, admin_conn, base_config, make_gateway
from tests.integration.test_reviews import Api, pending_error, qty, review_config

_KEEP: list[Any] = []


@pytest.fixture(scope="module")
def gw(it_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = make_gateway(tmp_path_factory.mktemp("attack_perf"), review_config(it_database))
    gateway.start()
    yield gateway
    gateway.stop()


@pytest.fixture(autouse=True)
def _close_raw() -> Iterator[None]:
    yield
    while _KEEP:
        _KEEP.pop().close()


def _session(gw: Gateway, principal: str) -> tuple[socket.socket, str]:
    """A logged-in connection handed over to the test as a socket, and its session id
    (the backend pid is the server's; the gateway's id is found by the audit rows)."""
    conn = psycopg.connect(gw.dsn(principal), autocommit=True)
    _KEEP.append(conn)
    sock = socket.fromfd(conn.pgconn.socket, socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(20)
    _KEEP.append(sock)
    return sock, ""


def _msg(kind: bytes, body: bytes) -> bytes:
    return kind + (len(body) + 4).to_bytes(4, "big") + body


def query(sql: str) -> bytes:
    return _msg(b"Q", sql.encode() + b"\x00")


def parse(name: str, sql: str, types: tuple[int, ...] = ()) -> bytes:
    body = name.encode() + b"\x00" + sql.encode() + b"\x00" + len(types).to_bytes(2, "big")
    return _msg(b"P", body + b"".join(t.to_bytes(4, "big") for t in types))


def bind(
    portal: str,
    statement: str,
    params: tuple[bytes | None, ...] = (),
    formats: tuple[int, ...] = (),
) -> bytes:
    body = portal.encode() + b"\x00" + statement.encode() + b"\x00"
    body += len(formats).to_bytes(2, "big") + b"".join(f.to_bytes(2, "big") for f in formats)
    body += len(params).to_bytes(2, "big")
    for p in params:
        body += b"\xff\xff\xff\xff" if p is None else len(p).to_bytes(4, "big") + p
    return _msg(b"B", body + b"\x00\x00")


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return _msg(b"E", portal.encode() + b"\x00" + max_rows.to_bytes(4, "big"))


def close(target: bytes, name: str) -> bytes:
    return _msg(b"C", target + name.encode() + b"\x00")


SYNC = _msg(b"S", b"")


def ready(sock: socket.socket, count: int) -> bytes:
    """Everything up to the ``count``th ReadyForQuery."""
    data = b""
    while data.count(b"Z\x00\x00\x00\x05") < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def actions(gw: Gateway, text_like: str, count: int = 1) -> list[dict[str, Any]]:
    """The payloads of recorded actions whose text contains ``text_like`` (the recorder
    writes a little after the statement ran)."""
    deadline = time.monotonic() + 20
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        db = sqlite3.connect(gw.workdir / "store.db")
        try:
            rows = db.execute(
                "select payload from audit_events where type = 'action' order by id"
            ).fetchall()
        except sqlite3.OperationalError:
            rows = []
        finally:
            db.close()
        found = [p for (p,) in rows if text_like in json.loads(p)["text"]]
        if len(found) >= count:
            return [json.loads(p) for p in found]
        time.sleep(0.1)
    raise AssertionError(f"{count} actions like {text_like!r} not recorded: {found}")


# -- pipelines with several batches in flight ---------------------------------------------


def test_a_statement_redefined_in_an_unanswered_batch_is_judged_by_both_meanings(
    gw: Gateway, it_database: str, table: str
) -> None:
    """Batch 1 prepares s as a SELECT, batch 2 closes and prepares it again as an UPDATE,
    batch 3 binds and executes s: all sent at once. When batch 3's Bind is judged, s may
    hold either (the Bind's own batch changed nothing, so the scan of pending changes
    must not stop at the first change of another batch and call it the one meaning):
    nothing may run without the review the UPDATE needs."""
    sock, _ = _session(gw, "agent")
    update = f"update {table} set qty = 5 where id = 1"
    sock.sendall(
        parse("s", "select 1")
        + SYNC
        + close(b"S", "s")
        + parse("s", update)
        + SYNC
        + bind("", "s")
        + execute()
        + SYNC
    )
    answer = ready(sock, 3)
    assert b"wardgate:unconfirmed-name" in answer or b"55000" in answer, answer
    assert qty(it_database, table) == 0


def test_the_batch_own_redefinition_is_the_one_meaning(
    gw: Gateway, it_database: str, table: str
) -> None:
    """Within one batch the latest Parse of a name is what its Bind gets: an UPDATE for
    the agent is held for a review (55000), never run, and the record says the UPDATE."""
    sock, _ = _session(gw, "agent")
    update = f"update {table} set qty = 6 where id = 1"
    sock.sendall(
        parse("s", "select 1")
        + close(b"S", "s")
        + parse("s", update)
        + bind("", "s")
        + execute()
        + SYNC
    )
    answer = ready(sock, 1)
    assert b"55000" in answer, answer
    assert qty(it_database, table) == 0


def test_deallocate_all_in_flight_leaves_a_bind_with_the_name_unknown(
    gw: Gateway, it_database: str, table: str
) -> None:
    """s is confirmed as an UPDATE (dev may write); a DEALLOCATE ALL in a Query and, at
    once, Bind s / Execute: the server runs DEALLOCATE ALL first, so the Bind fails and
    nothing is written; afterwards s is unknown to the gateway as to the server."""
    sock, _ = _session(gw, "dev")
    update = f"update {table} set qty = qty + 1 where id = 2"
    sock.sendall(parse("s", update) + SYNC)
    ready(sock, 1)
    sock.sendall(query("deallocate all") + bind("", "s") + execute() + SYNC)
    answer = ready(sock, 2)
    assert b"26000" in answer, answer  # prepared statement "s" does not exist
    assert qty(it_database, table, 2) == 0
    sock.sendall(bind("", "s") + execute() + SYNC)
    assert b"26000" in ready(sock, 1)
    assert qty(it_database, table, 2) == 0


def test_discard_all_forgets_statements_and_portals(
    gw: Gateway, it_database: str, table: str
) -> None:
    """DISCARD ALL drops every prepared statement and cursor: a later Bind of the name
    (after the agent's s was a SELECT) is judged as an unknown name and refused by the
    server; nothing is written."""
    sock, _ = _session(gw, "dev")
    sock.sendall(parse("s", f"update {table} set qty = 9 where id = 3") + SYNC)
    ready(sock, 1)
    sock.sendall(query("discard all") + bind("", "s") + execute() + SYNC)
    answer = ready(sock, 2)
    assert b"26000" in answer, answer
    assert qty(it_database, table, 3) == 0


# -- portals and the end of transactions ---------------------------------------------------


def test_a_with_hold_cursor_outlives_its_transaction_and_others_do_not(
    gw: Gateway, it_database: str, table: str
) -> None:
    """At COMMIT the portals of the transaction are dropped, WITH HOLD cursors kept (the
    drop has a fast path when nothing is kept): Execute of the held cursor fetches its
    rows; Execute of the other is refused by the server (34000)."""
    sock, _ = _session(gw, "dev")
    sock.sendall(
        query(
            f"begin; declare h cursor with hold for select id from {table} order by id; "
            f"declare t cursor for select id from {table}; commit"
        )
    )
    assert b"COMMIT" in ready(sock, 1)
    sock.sendall(execute("h", 2) + SYNC)
    answer = ready(sock, 1)
    assert answer.count(b"D\x00") == 2, answer  # two DataRows, then PortalSuspended
    sock.sendall(execute("t") + SYNC)
    assert b"34000" in ready(sock, 1)
    sock.sendall(query("begin; declare u cursor for select 1; commit"))
    ready(sock, 1)
    sock.sendall(execute("u") + SYNC)
    assert b"34000" in ready(sock, 1)
    sock.sendall(execute("h", 0) + SYNC)
    assert ready(sock, 1).count(b"D\x00") == 8
    fetched = actions(gw, 'FETCH FORWARD ALL FROM "h"', 2)
    assert all(p["status"] == "ok" for p in fetched)


def test_a_named_portal_rebound_in_flight_is_executed_as_the_server_binds_it(
    gw: Gateway, it_database: str, table: str
) -> None:
    """Portal p bound to a SELECT (answered); then, in one batch, p bound again to an
    UPDATE fails (p exists: 42P03) and Execute p is skipped by the server. Nothing is
    written, and the model keeps p as the SELECT: its Execute in a later batch runs."""
    sock, _ = _session(gw, "agent")
    sock.sendall(
        query("begin") + parse("r", f"select qty from {table} where id = 4") + bind("p", "r") + SYNC
    )
    ready(sock, 2)
    sock.sendall(
        parse("w", f"update {table} set qty = 4 where id = 4")
        + bind("p", "w")
        + execute("p")
        + SYNC
    )
    answer = ready(sock, 1)
    assert b"42P03" in answer, answer  # cursor "p" already exists
    assert qty(it_database, table, 4) == 0
    sock.sendall(query("rollback"))
    ready(sock, 1)


# -- parameters: binary, format codes, NULL and empty ---------------------------------------


def test_parameters_null_empty_and_binary_are_recorded_as_before(
    gw: Gateway, it_database: str, table: str
) -> None:
    """Text parameters (decoded directly now), a NULL, an empty string, a binary int4:
    the row written is what the record shows, and the record is the payload's shape."""
    sock, _ = _session(gw, "dev")
    sql = f"update {table} set qty = coalesce($1::int, 0) + length($2::text) + $3 where id = 5"
    sock.sendall(
        parse("", sql, (0, 0, 23))
        + bind("", "", (None, b"", (7).to_bytes(4, "big")), (0, 0, 1))
        + execute()
        + SYNC
    )
    assert b"UPDATE 1" in ready(sock, 1)
    assert qty(it_database, table, 5) == 7
    sock.sendall(parse("", sql) + bind("", "", (b"1", b"ab", b"3")) + execute() + SYNC)
    assert b"UPDATE 1" in ready(sock, 1)
    assert qty(it_database, table, 5) == 6
    recorded = actions(gw, "where id = 5", 2)
    assert [p["params"] for p in recorded[-2:]] == [[None, "", "7"], ["1", "ab", "3"]]


def test_a_format_code_other_than_0_or_1_is_refused_by_the_server(
    gw: Gateway, it_database: str, table: str
) -> None:
    """Format code 2 (which the server refuses, 22P02/08P01 "unsupported format code"):
    nothing runs and the session goes on."""
    sock, _ = _session(gw, "dev")
    sql = f"update {table} set qty = $1::int where id = 6"
    sock.sendall(parse("", sql) + bind("", "", (b"5",), (2,)) + execute() + SYNC)
    answer = ready(sock, 1)
    assert b"E\x00" in answer and b"UPDATE" not in answer, answer
    assert qty(it_database, table, 6) == 0
    sock.sendall(query("select 42"))
    assert b"42" in ready(sock, 1)


def test_a_binary_bool_other_than_0_or_1_is_still_blocked(
    gw: Gateway, it_database: str, table: str
) -> None:
    """The ambiguity test now runs only when a format code is 1; a single format code
    of 1 applies to every parameter: the byte 0x02 for a bool is blocked."""
    sock, _ = _session(gw, "dev")
    sql = f"update {table} set qty = 8 where id = 7 and $1::bool"
    sock.sendall(parse("", sql, (16,)) + bind("", "", (b"\x02",), (1,)) + execute() + SYNC)
    answer = ready(sock, 1)
    assert b"wardgate:ambiguous-parameter" in answer, answer
    assert qty(it_database, table, 7) == 0


# -- the audit chain ---------------------------------------------------------------------


def test_the_chain_written_as_json_text_verifies(gw: Gateway, table: str) -> None:
    """Payloads written as text pieces (non-ASCII text, a lone surrogate's neighbours,
    floats, NULL rows) still hash and verify."""
    with psycopg.connect(gw.dsn("dev"), autocommit=True) as conn:
        conn.execute("select 'é∑ \u2028 \\ \" \t' as x, 1.5::float8, null")
        conn.execute(f"select qty from {table} where id = %s", (1,))
    actions(gw, "1.5::float8")
    result = gw.cli("audit", "verify", check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# -- found on the way: tables the fingerprint cannot tell apart ------------------------------


def test_a_guardrail_on_one_partition_is_not_lifted_by_its_sibling(
    it_database: str, tmp_path: Path
) -> None:
    """libpg_query's fingerprint drops digit runs from table names, and the gate shared
    a write's verdict by fingerprint: an UPDATE of ..._2024 (allowed) let the same
    UPDATE of ..._2025 through a guardrail that blocks it. The 2025 table stays as it
    was; the 2024 one is written."""
    prefix = f"pay_{uuid.uuid4().hex[:6]}x"
    old, new = f"{prefix}_2024", f"{prefix}_2025"
    with admin_conn(it_database) as conn:
        for name in (old, new):
            conn.execute(f"create table {name} (id int primary key, qty int)")
            conn.execute(f"insert into {name} values (1, 0)")
    config = base_config(it_database).replace(
        "guardrails:\n",
        f"guardrails:\n  - {{name: closed-year, match: {{tables: [{new}]}}, verdict: block}}\n",
    )
    gateway = make_gateway(tmp_path / "gw", config)
    gateway.start()
    try:
        with psycopg.connect(gateway.dsn("dev"), autocommit=True) as conn:
            conn.execute(f"update {old} set qty = 1 where id = 1")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"update {new} set qty = 1 where id = 1")
    finally:
        gateway.stop()
        with admin_conn(it_database) as conn:
            rows = [conn.execute(f"select qty from {n}").fetchone() for n in (old, new)]
            for name in (old, new):
                conn.execute(f"drop table {name}")
    assert rows == [(1,), (0,)]


def test_an_approval_binds_the_parameters_format_as_well_as_their_text(
    gw: Gateway, it_database: str, table: str
) -> None:
    """Text parameters are now decoded directly and the binding digest hashes one joined
    buffer: the approval of an UPDATE with binary parameters runs that Bind once, while
    the same values sent as text are another action (held again, nothing written)."""
    api = Api(gw, "reviewer")
    binary = f"UPDATE {table} SET qty = %b WHERE id = %b"
    text = f"UPDATE {table} SET qty = %t WHERE id = %t"
    with psycopg.connect(gw.dsn("agent"), autocommit=True) as conn:
        review_id = pending_error(conn, binary, (5, 8))
        api.post(f"/reviews/{review_id}/approve")
        assert pending_error(conn, text, (5, 8)) != review_id  # text: another action
        assert qty(it_database, table, 8) == 0
        conn.execute(binary, (5, 8))
        assert qty(it_database, table, 8) == 5
        assert pending_error(conn, binary, (5, 8)) != review_id  # used once
