"""The session model changes only when the server confirms, and the gate judges what
PostgreSQL will execute: pipelined setting changes, redefined names, approvals bound to
the search_path. Each test checks the server's state, not only the verdict."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import pq

from tests.integration.conftest import Gateway, admin_conn, make_gateway
from tests.integration.test_reviews import cli_as, pending_error, qty, review_config


@pytest.fixture
def gw(it_database: str, tmp_path: Path) -> Iterator[Gateway]:
    gateway = make_gateway(tmp_path / "gw", review_config(it_database))
    gateway.start()
    yield gateway
    gateway.stop()


def test_a_redefinition_the_server_refused_does_not_change_what_a_name_runs(
    gw: Gateway, it_database: str, table: str
) -> None:
    """Parse s1 = an UPDATE, then SQL PREPARE s1 (refused by the server: it exists), then
    EXECUTE s1: that runs the UPDATE, so it is held for a review, not run as SELECT 1."""
    with psycopg.connect(gw.dsn("agent"), autocommit=True) as conn:
        pg = conn.pgconn
        res = pg.prepare(b"s1", f"update {table} set qty = 99 where id = 1".encode())
        assert res.status == pq.ExecStatus.COMMAND_OK, res.error_message
        with pytest.raises(psycopg.errors.DuplicatePreparedStatement):
            conn.execute("prepare s1 as select 1")
        pending_error(conn, "execute s1")
    assert qty(it_database, table) == 0


def test_pipelined_redefinition_is_judged_by_every_meaning(
    gw: Gateway, it_database: str, table: str
) -> None:
    """PREPARE s2 AS SELECT and, before its answer, EXECUTE s2 in another Query: if the
    PREPARE fails (s2 already holds an UPDATE) the EXECUTE runs the UPDATE, so with two
    possible meanings one of which needs a review, nothing runs."""
    conn = psycopg.connect(gw.dsn("agent"), autocommit=True)
    _KEEP.append(conn)
    res = conn.pgconn.prepare(b"s2", f"update {table} set qty = 77 where id = 2".encode())
    assert res.status == pq.ExecStatus.COMMAND_OK
    sock = _raw(conn)
    # Both sent at once: the gateway judges EXECUTE before the PREPARE's answer.
    sock.sendall(_query(b"prepare s2 as select 1") + _query(b"execute s2"))
    answer = _read_until_ready(sock, 2)
    assert b"42P05" in answer  # the server refused the PREPARE: s2 is still the UPDATE
    assert b"wardgate:unconfirmed-name" in answer, answer
    assert qty(it_database, table, 2) == 0


def _raw_session(gw: Gateway, principal: str) -> socket.socket:
    """A TCP connection to the gateway, logged in with psycopg's own handshake, then
    handed over: the test writes protocol bytes itself."""
    conn = psycopg.connect(gw.dsn(principal), autocommit=True)
    _KEEP.append(conn)
    return _raw(conn)


def _raw(conn: psycopg.Connection[Any]) -> socket.socket:
    sock = socket.fromfd(conn.pgconn.socket, socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(20)
    _KEEP.append(sock)
    return sock


_KEEP: list[Any] = []


def _query(sql: bytes) -> bytes:
    body = sql + b"\x00"
    return b"Q" + (len(body) + 4).to_bytes(4, "big") + body


def _read_until_ready(sock: socket.socket, count: int) -> bytes:
    data = b""
    while data.count(b"Z\x00\x00\x00\x05") < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


@pytest.fixture(autouse=True)
def _close_raw() -> Iterator[None]:
    yield
    while _KEEP:
        _KEEP.pop().close()


def test_sjis_pipeline_never_runs_the_hidden_update(
    gw: Gateway, it_database: str, table: str
) -> None:
    """SET client_encoding TO 'SJIS' is refused; the Query right behind it, judged and run
    in UTF8, is one SELECT of a literal. Read-only agent and the write log: untouched."""
    sock = _raw_session(gw, "agent")
    hidden = b"SELECT E'\xc3\x81\\'; UPDATE " + table.encode() + b" SET qty = 5 WHERE id = 1; --'"
    sock.sendall(_query(b"SET client_encoding TO 'SJIS'") + _query(hidden))
    answer = _read_until_ready(sock, 2)
    assert b"wardgate:unreadable-encoding" in answer
    assert qty(it_database, table) == 0


def test_a_pipelined_message_beyond_ascii_waits_for_the_confirmed_encoding(
    gw: Gateway, it_database: str, table: str
) -> None:
    """After SET client_encoding TO 'LATIN1', the next Query (sent at once) holds a LATIN1
    byte: it is judged only once the server reported the new encoding, so the gateway
    reads the same string the server stores."""
    with admin_conn(it_database) as admin:
        admin.execute(f"alter table {table} add column note text")
        admin.execute(f"grant all on {table} to public")
    sock = _raw_session(gw, "dev")
    update = f"UPDATE {table} SET note = '".encode() + b"caf\xe9" + b"' WHERE id = 3"
    sock.sendall(_query(b"SET client_encoding TO 'LATIN1'") + _query(update))
    answer = _read_until_ready(sock, 2)
    assert b"UPDATE 1" in answer, answer
    with admin_conn(it_database) as admin:
        row = admin.execute(f"select note from {table} where id = 3").fetchone()
    assert row == ("café",)
    records = gw.cli("sessions", "list", "--json").stdout
    assert records  # recorded (the text itself is checked in test_audit.py)


def test_in_the_same_pipeline_bytes_beyond_ascii_after_an_encoding_change_are_refused(
    gw: Gateway, it_database: str, table: str
) -> None:
    """Extended protocol: SET client_encoding executed, then (no Sync yet) a Parse with a
    byte beyond ASCII. The server will not report the encoding before the Sync, so the
    gateway cannot know how it reads that Parse: it is refused, and nothing runs."""
    with psycopg.connect(gw.dsn("dev"), autocommit=True) as conn:
        pg = conn.pgconn
        pg.enter_pipeline_mode()
        pg.send_query_params(b"SET client_encoding TO 'LATIN1'", None)
        pg.send_query_params(
            f"UPDATE {table} SET qty = 3 WHERE id = 4 AND 'caf".encode() + b"\xe9' <> ''", None
        )
        pg.pipeline_sync()
        statuses = []
        for _ in range(20):
            res = pg.get_result()
            if res is None:
                continue
            statuses.append((res.status, res.error_message))
            if res.status == pq.ExecStatus.PIPELINE_SYNC:
                break
        pg.exit_pipeline_mode()
    assert any(b"wardgate:encoding-barrier" in (m or b"") for _, m in statuses), statuses
    assert qty(it_database, table, 4) == 0


def test_an_approval_binds_the_search_path_the_server_will_use(
    gw: Gateway, it_database: str
) -> None:
    """After SET search_path = archive, public, an agent's UPDATE stock is held; the review
    shows archive first, the preview counts archive.stock's rows, and an approval given
    for it does not run the same text in a session whose search_path is public."""
    with admin_conn(it_database) as admin:
        admin.execute("create schema if not exists archive")
        admin.execute("grant usage, create on schema archive to public")
        for schema, rows in (("archive", 3), ("public", 7)):
            admin.execute(f"drop table if exists {schema}.sp_stock")
            admin.execute(f"create table {schema}.sp_stock (id int, qty int)")
            admin.execute(
                f"insert into {schema}.sp_stock select g, 0 from generate_series(1, {rows}) g"
            )
            admin.execute(f"grant all on {schema}.sp_stock to public")
    dsn = gw.dsn("agent")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("set search_path = archive, public")
        review = pending_error(conn, "update sp_stock set qty = 1 where qty = 0")

    def show() -> dict[str, Any]:
        found: dict[str, Any] = json.loads(
            cli_as(gw, "reviewer", "reviews", "show", review, "--json").stdout
        )
        return found

    shown = show()
    assert shown["detail"]["context"]["search_path"] == "archive, public", shown
    deadline = time.monotonic() + 20
    while (shown.get("preview") or {}).get("kind") in (None, "pending"):
        assert time.monotonic() < deadline, shown
        time.sleep(0.3)
        shown = show()
    assert shown["preview"].get("affected_rows") == 3, shown["preview"]
    cli_as(gw, "reviewer", "reviews", "approve", review)
    # The same text in a session with the default search_path is another action.
    with psycopg.connect(dsn, autocommit=True) as conn:
        pending_error(conn, "update sp_stock set qty = 1 where qty = 0")
    with admin_conn(it_database) as admin:
        assert admin.execute("select count(*) from public.sp_stock where qty = 1").fetchone() == (
            0,
        )
        assert admin.execute("select count(*) from archive.sp_stock where qty = 1").fetchone() == (
            0,
        )
    # In a session with the approved search_path it runs, once, on archive.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("set search_path = archive, public")
        conn.execute("update sp_stock set qty = 1 where qty = 0")
    with admin_conn(it_database) as admin:
        assert admin.execute("select count(*) from archive.sp_stock where qty = 1").fetchone() == (
            3,
        )
        assert admin.execute("select count(*) from public.sp_stock where qty = 1").fetchone() == (
            0,
        )


def test_serve_warns_when_agents_reach_a_superuser(
    gateway: Gateway, it_database: str, tmp_path: Path
) -> None:
    """The shared gateway dials postgres (a superuser) for connection 'it', which agents
    use: serve says so once, loudly; a connection marked privileged stays quiet."""
    deadline = time.monotonic() + 20
    while "agents reach the database as role 'postgres'" not in gateway.log:
        assert time.monotonic() < deadline, gateway.log
        time.sleep(0.2)
    line = next(x for x in gateway.log.splitlines() if "agents reach the database" in x)
    assert "connection 'it'" in line and "is a superuser" in line and "WARNING" in line
    from tests.integration.conftest import base_config

    quiet = make_gateway(
        tmp_path / "quiet",
        base_config(it_database).replace(
            "user: postgres, tls: disable}", "user: postgres, tls: disable, privileged: true}", 1
        ),
    )
    quiet.start()
    try:
        with psycopg.connect(quiet.dsn("agent")) as conn:
            conn.execute("select 1")
        time.sleep(1)
        assert "agents reach the database" not in quiet.log
    finally:
        quiet.stop()


def test_a_user_overload_of_a_trusted_built_in_is_judged_as_a_user_function(
    gateway: Gateway, it_database: str
) -> None:
    """public.lower(int), VOLATILE and writing, made outside the gateway: PostgreSQL runs
    it for lower(5). Within the watch's refresh the gate judges lower as unknown on this
    connection, so the read-only agent's call is refused and nothing is written; lower
    on text through pg_catalog explicitly stays a read."""
    with admin_conn(it_database) as admin:
        admin.execute("create table if not exists overload_log (what text)")
        admin.execute(
            "create or replace function public.lower(int) returns int language sql as "
            "$$ insert into overload_log values ('ran'); select 1 $$"
        )
    try:
        deadline = time.monotonic() + 45
        with psycopg.connect(gateway.dsn("dev"), autocommit=True) as dev:
            dev.execute("create temporary table overload_poke (a int)")  # DDL: look again
        while "public.lower" not in gateway.log:
            assert time.monotonic() < deadline, gateway.log[-2000:]
            time.sleep(0.3)
        with psycopg.connect(gateway.dsn("agent"), autocommit=True) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="unknown_function"):
                conn.execute("select lower(5)")
            assert conn.execute("select pg_catalog.lower('A')").fetchone() == ("a",)
        with admin_conn(it_database) as admin:
            assert admin.execute("select count(*) from overload_log").fetchone() == (0,)
        # Made through the gateway, such a routine is an admin statement.
        with psycopg.connect(gateway.dsn("dev"), autocommit=True) as dev:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="shadows_builtin"):
                dev.execute(
                    "create function public.upper(int) returns int language sql as $$ select 1 $$"
                )
    finally:
        with admin_conn(it_database) as admin:
            admin.execute("drop function if exists public.lower(int)")
            admin.execute("drop table if exists overload_log")
